//! The llama forward pass on f32 buffers: RMSNorm, quantized projections, RoPE, grouped-query
//! attention over the KV cache, SiLU-gated MLP, with the LoRA and steering hooks.
//!
//! It allocates nothing per token once its scratch buffers have grown to the batch size.

use std::cell::RefCell;

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::hooks::{Hooks, LowRankTerm, Proj};
use super::kv_cache::{KvCache, Rows};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::team::{Par, SharedOut};
use crate::kernels::{kv, BlockQ8_0, Kernels, QK};
use crate::model::config::{ModelConfig, RopeStyle};
use crate::model::qmatrix::{matmul, Delta, MatJob, Prepared};
use crate::model::weights::ModelWeights;
use crate::{Error, Result};

/// Which positions of a batch get logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// None (a prefill chunk that is not the last).
    None,
    /// Only the last position.
    Last,
    /// Every position.
    All,
}

/// Buffers reused across forward calls.
#[derive(Debug, Default)]
pub struct Scratch {
    x: Vec<f32>,
    xn: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    o: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    rope_cos: Vec<f32>,
    rope_sin: Vec<f32>,
    /// `scale·A·x` of the low-rank terms of the current projections.
    u: Vec<f32>,
    /// Logits of the requested positions, `[n, vocab]`.
    pub logits: Vec<f32>,
}

fn sized(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

/// A loaded model ready to run.
#[derive(Debug)]
pub struct Transformer {
    /// Hyper-parameters.
    pub cfg: ModelConfig,
    /// Weights.
    pub w: ModelWeights,
    /// `1 / base^(2i/rope_dims)` (divided by the file's frequency factors if any).
    inv_freq: Vec<f32>,
}

#[derive(Default)]
struct AttnScratch {
    scores: Vec<f32>,
    qh: Vec<f32>,
    h16: Vec<f16>,
    /// The query quantized to `Q8_0` (against quantized keys).
    qb: Vec<BlockQ8_0>,
}

/// `out = f16(x)` as f32 (SIMD conversions both ways).
fn round_f16(x: &[f32], out: &mut [f32], tmp: &mut Vec<f16>) {
    tmp.resize(x.len(), f16::ZERO);
    tmp.convert_from_f32_slice(x);
    tmp.convert_to_f32_slice(out);
}

fn round_f16_in_place(x: &mut [f32], tmp: &mut Vec<f16>) {
    tmp.resize(x.len(), f16::ZERO);
    tmp.convert_from_f32_slice(x);
    tmp.convert_to_f32_slice(x);
}

thread_local! {
    static SCRATCH: RefCell<AttnScratch> = RefCell::new(AttnScratch::default());
}

impl Transformer {
    /// Wraps config and weights.
    pub fn new(cfg: ModelConfig, w: ModelWeights) -> Self {
        let inv_freq = cfg.rope_inv_freq(w.rope_freqs.as_deref());
        Self { cfg, w, inv_freq }
    }

    /// Runs `tokens` at positions `cache.len()..`, appending their keys and values to `cache`,
    /// and leaves the requested logits in `scratch.logits`.
    pub(crate) fn forward(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        hooks: &Hooks,
        scratch: &mut Scratch,
        want: Logits,
        par: Par<'_>,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let n = tokens.len();
        if n == 0 {
            return Err(Error::EmptyPrompt);
        }
        let p0 = cache.len();
        if p0 + n > cache.capacity() {
            return Err(Error::ContextOverflow { needed: p0 + n, context: cache.capacity() });
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
            return Err(Error::invalid(format!("token id {bad} outside the vocabulary of {}", cfg.vocab_size)));
        }
        let k = Kernels::detect();
        let (d, hd, qd, kvd, ff) = (cfg.d_model, cfg.head_dim, cfg.n_heads * cfg.head_dim, cfg.kv_dim(), cfg.ffn_dim);

        // Embedding lookup, one dequantized row per token.
        let x = sized(&mut scratch.x, n * d);
        for (t, &tok) in tokens.iter().enumerate() {
            self.w.token_embd.dequantize_row(tok as usize, &mut x[t * d..(t + 1) * d]);
        }
        self.rope_tables(p0, n, scratch);

        for (l, lw) in self.w.layers.iter().enumerate() {
            // --- attention ---
            rms_norm(&scratch.x[..n * d], &lw.attn_norm, cfg.rms_eps, sized(&mut scratch.xn, n * d), d);
            {
                let xn = &scratch.xn[..n * d];
                let q = sized(&mut scratch.q, n * qd);
                let kk = sized(&mut scratch.k, n * kvd);
                let v = sized(&mut scratch.v, n * kvd);
                let p = Prepared::new(xn, n, d, &[&lw.wq, &lw.wk, &lw.wv]);
                let (tq, tk, tv) = (terms(hooks, l, Proj::Q), terms(hooks, l, Proj::K), terms(hooks, l, Proj::V));
                scratch.u.clear();
                let rq = low_rank_inputs(tq, xn, n, k, &mut scratch.u);
                let rk = low_rank_inputs(tk, xn, n, k, &mut scratch.u);
                let rv = low_rank_inputs(tv, xn, n, k, &mut scratch.u);
                let u = &scratch.u;
                matmul(par, &p, &mut [
                    MatJob { w: &lw.wq, out: q, delta: Delta { terms: tq, u: &u[rq] } },
                    MatJob { w: &lw.wk, out: kk, delta: Delta { terms: tk, u: &u[rk] } },
                    MatJob { w: &lw.wv, out: v, delta: Delta { terms: tv, u: &u[rv] } },
                ]);
                add_bias(q, lw.bq.as_deref());
                add_bias(kk, lw.bk.as_deref());
                add_bias(v, lw.bv.as_deref());
            }
            self.rope(&mut scratch.q[..n * qd], n, cfg.n_heads, &scratch.rope_cos, &scratch.rope_sin);
            self.rope(&mut scratch.k[..n * kvd], n, cfg.n_kv_heads, &scratch.rope_cos, &scratch.rope_sin);
            for t in 0..n {
                for h in 0..cfg.n_kv_heads {
                    let o = t * kvd + h * hd;
                    cache.write(l, h, p0 + t, &scratch.k[o..o + hd], &scratch.v[o..o + hd], k);
                }
            }
            self.attention(l, p0, n, &scratch.q[..n * qd], cache, sized(&mut scratch.att, n * qd), k, par);
            {
                let att = &scratch.att[..n * qd];
                let o = sized(&mut scratch.o, n * d);
                let p = Prepared::new(att, n, qd, &[&lw.wo]);
                let to = terms(hooks, l, Proj::O);
                scratch.u.clear();
                let ro = low_rank_inputs(to, att, n, k, &mut scratch.u);
                matmul(par, &p, &mut [MatJob { w: &lw.wo, out: o, delta: Delta { terms: to, u: &scratch.u[ro] } }]);
            }
            for (xi, oi) in scratch.x[..n * d].iter_mut().zip(&scratch.o[..n * d]) {
                *xi += oi;
            }

            // --- MLP ---
            rms_norm(&scratch.x[..n * d], &lw.ffn_norm, cfg.rms_eps, sized(&mut scratch.xn, n * d), d);
            {
                let xn = &scratch.xn[..n * d];
                let g = sized(&mut scratch.gate, n * ff);
                let u = sized(&mut scratch.up, n * ff);
                let p = Prepared::new(xn, n, d, &[&lw.w_gate, &lw.w_up]);
                let (tg, tu) = (terms(hooks, l, Proj::Gate), terms(hooks, l, Proj::Up));
                scratch.u.clear();
                let rg = low_rank_inputs(tg, xn, n, k, &mut scratch.u);
                let ru = low_rank_inputs(tu, xn, n, k, &mut scratch.u);
                let uu = &scratch.u;
                matmul(par, &p, &mut [
                    MatJob { w: &lw.w_gate, out: g, delta: Delta { terms: tg, u: &uu[rg] } },
                    MatJob { w: &lw.w_up, out: u, delta: Delta { terms: tu, u: &uu[ru] } },
                ]);
                for (gi, ui) in g.iter_mut().zip(u.iter()) {
                    *gi = silu(*gi) * ui;
                }
            }
            {
                let h = &scratch.gate[..n * ff];
                let o = sized(&mut scratch.o, n * d);
                let p = Prepared::new(h, n, ff, &[&lw.w_down]);
                let td = terms(hooks, l, Proj::Down);
                scratch.u.clear();
                let rd = low_rank_inputs(td, h, n, k, &mut scratch.u);
                matmul(par, &p, &mut [MatJob { w: &lw.w_down, out: o, delta: Delta { terms: td, u: &scratch.u[rd] } }]);
            }
            for (xi, oi) in scratch.x[..n * d].iter_mut().zip(&scratch.o[..n * d]) {
                *xi += oi;
            }
            if let Some(r) = &hooks.residual {
                if r.applies_to(l) {
                    r.after_layer(l, &mut scratch.x[..n * d], n);
                }
            }
        }
        cache.advance(n);

        let (first, rows) = match want {
            Logits::None => return Ok(()),
            Logits::Last => (n - 1, 1),
            Logits::All => (0, n),
        };
        let xs = &scratch.x[first * d..(first + rows) * d];
        rms_norm(xs, &self.w.output_norm, cfg.rms_eps, sized(&mut scratch.xn, rows * d), d);
        let logits = sized(&mut scratch.logits, rows * cfg.vocab_size);
        let p = Prepared::new(&scratch.xn[..rows * d], rows, d, &[&self.w.output]);
        matmul(par, &p, &mut [MatJob::new(&self.w.output, logits)]);
        scratch.logits.truncate(rows * cfg.vocab_size);
        Ok(())
    }

    fn rope_tables(&self, p0: usize, n: usize, s: &mut Scratch) {
        let half = self.inv_freq.len();
        let cos = sized(&mut s.rope_cos, n * half);
        for t in 0..n {
            for (i, f) in self.inv_freq.iter().enumerate() {
                cos[t * half + i] = ((p0 + t) as f32 * f).cos();
            }
        }
        let sin = sized(&mut s.rope_sin, n * half);
        for t in 0..n {
            for (i, f) in self.inv_freq.iter().enumerate() {
                sin[t * half + i] = ((p0 + t) as f32 * f).sin();
            }
        }
    }

    /// Rotates the first `rope_dims` dimensions of every head of `x` (`[n, heads·head_dim]`).
    fn rope(&self, x: &mut [f32], n: usize, heads: usize, cos: &[f32], sin: &[f32]) {
        let hd = self.cfg.head_dim;
        let half = self.inv_freq.len();
        for t in 0..n {
            let (c, s) = (&cos[t * half..(t + 1) * half], &sin[t * half..(t + 1) * half]);
            for h in 0..heads {
                rotate(self.cfg.rope_style, &mut x[(t * heads + h) * hd..(t * heads + h + 1) * hd], c, s);
            }
        }
    }

    /// Drops positions `keep..keep + discard` from `cache` and moves the later ones down, their
    /// keys rotated back by `discard` positions (RoPE is a rotation by `position · θ`, so a key
    /// moved by `-discard` is the key rotated by `-discard · θ`): llama.cpp's context shift,
    /// in place of running the kept tokens again.
    pub(crate) fn shift_cache(&self, cache: &mut KvCache, keep: usize, discard: usize) {
        let angle = -(discard as f32);
        let c: Vec<f32> = self.inv_freq.iter().map(|f| (angle * f).cos()).collect();
        let s: Vec<f32> = self.inv_freq.iter().map(|f| (angle * f).sin()).collect();
        let style = self.cfg.rope_style;
        cache.shift(keep, discard, &|v: &mut [f32]| rotate(style, v, &c, &s), Kernels::detect());
    }

    /// Causal grouped-query attention of the batch's queries over the cache.
    ///
    /// Numerics follow llama.cpp's CPU path: with f16 keys the query is rounded to f16 for
    /// `q·k`; with quantized keys it is quantized to `Q8_0` and the block kernels score it; the
    /// softmax runs in f32 and, against f16 values, its weights are rounded to f16 before they
    /// weight the values (quantized values are dequantized into f32 sums); every sum is f32.
    #[allow(clippy::too_many_arguments)]
    fn attention(&self, l: usize, p0: usize, n: usize, q: &[f32], cache: &KvCache, out: &mut [f32], k: &Kernels, par: Par<'_>) {
        let cfg = &self.cfg;
        let (hd, nh) = (cfg.head_dim, cfg.n_heads);
        let group = nh / cfg.n_kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let optr = SharedOut::new(out);
        // One item = one token and one query head.
        let one = |i: usize| {
            let (t, h) = (i / nh, i % nh);
            let upto = p0 + t + 1;
            let (ks, vs) = cache.head(l, h / group, upto);
            SCRATCH.with(|s| {
                let mut s = s.borrow_mut();
                let AttnScratch { scores, qh, h16, qb } = &mut *s;
                scores.resize(upto, 0.0);
                qh.resize(hd, 0.0);
                let qi = &q[i * hd..(i + 1) * hd];
                let nb = hd / QK;
                match ks {
                    Rows::F16(ks) => {
                        round_f16(qi, qh, h16);
                        kv::scores_f16(k, qh, ks, scale, scores);
                    }
                    Rows::Q8_0(kb) => {
                        qb.resize(nb, BlockQ8_0::default());
                        (k.quantize_q8_0)(qi, qb);
                        for (j, sj) in scores.iter_mut().enumerate() {
                            *sj = (k.dot_q8_0_q8_0)(&kb[j * nb..(j + 1) * nb], qb) * scale;
                        }
                    }
                    Rows::Q4_0(kb) => {
                        qb.resize(nb, BlockQ8_0::default());
                        (k.quantize_q8_0)(qi, qb);
                        for (j, sj) in scores.iter_mut().enumerate() {
                            *sj = (k.dot_q4_0_q8_0)(&kb[j * nb..(j + 1) * nb], qb) * scale;
                        }
                    }
                }
                let max = scores.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                let mut sum = 0f32;
                for sj in scores.iter_mut() {
                    *sj = (*sj - max).exp();
                    sum += *sj;
                }
                let inv = 1.0 / sum;
                scores.iter_mut().for_each(|x| *x *= inv);
                // SAFETY: item i owns out[i*hd..(i+1)*hd]; members take disjoint items and
                // `out` outlives the run.
                let o = unsafe { std::slice::from_raw_parts_mut(optr.ptr().add(i * hd), hd) };
                o.fill(0.0);
                match vs {
                    Rows::F16(vs) => {
                        round_f16_in_place(scores, h16);
                        kv::weighted_sum_f16(k, scores, vs, o);
                    }
                    Rows::Q8_0(vb) => {
                        for (j, &w) in scores.iter().enumerate() {
                            kv::axpy_q8_0(w, &vb[j * nb..(j + 1) * nb], o);
                        }
                    }
                    Rows::Q4_0(vb) => {
                        for (j, &w) in scores.iter().enumerate() {
                            kv::axpy_q4_0(w, &vb[j * nb..(j + 1) * nb], o);
                        }
                    }
                }
            });
        };
        // Parallel only when there is enough work to pay for the hand-off.
        let items = n * nh;
        let members = if n * nh * (p0 + n) >= 512 { par.size() } else { 1 };
        if members > 1 {
            let next = AtomicUsize::new(0);
            par.run(&|_tid| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= items {
                    break;
                }
                one(i);
            });
        } else {
            (0..items).for_each(one);
        }
    }
}

/// Rotates one head's vector `v` by the angles whose cosines and sines are `c` and `s` (one per
/// rotated pair), pairing dimensions as the model's RoPE style does.
fn rotate(style: RopeStyle, v: &mut [f32], c: &[f32], s: &[f32]) {
    let half = c.len();
    match style {
        RopeStyle::Interleaved => {
            for i in 0..half {
                let (a, b) = (v[2 * i], v[2 * i + 1]);
                v[2 * i] = a * c[i] - b * s[i];
                v[2 * i + 1] = a * s[i] + b * c[i];
            }
        }
        RopeStyle::Neox => {
            for i in 0..half {
                let (a, b) = (v[i], v[i + half]);
                v[i] = a * c[i] - b * s[i];
                v[i + half] = a * s[i] + b * c[i];
            }
        }
    }
}

fn terms<'h>(hooks: &'h Hooks, layer: usize, proj: Proj) -> &'h [LowRankTerm] {
    hooks.linear.as_ref().map_or(&[], |h| h.terms(layer, proj))
}

/// Appends `scale·A·x` (`[n, rank]`) of every term to `u`; returns the range it wrote.
fn low_rank_inputs(terms: &[LowRankTerm], x: &[f32], n: usize, k: &Kernels, u: &mut Vec<f32>) -> std::ops::Range<usize> {
    let start = u.len();
    for term in terms {
        let f = &term.factors;
        let d_in = f.d_in();
        assert_eq!(x.len(), n * d_in, "low-rank term input width");
        for xt in x.chunks_exact(d_in) {
            for ar in f.a().chunks_exact(d_in) {
                u.push(term.scale * (k.dot_f32_f16)(xt, ar));
            }
        }
    }
    start..u.len()
}

fn add_bias(y: &mut [f32], b: Option<&[f32]>) {
    if let Some(b) = b {
        for row in y.chunks_mut(b.len()) {
            for (yi, bi) in row.iter_mut().zip(b) {
                *yi += bi;
            }
        }
    }
}

#[inline]
fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `out = x / rms(x) · g`, row by row (`d` values per row).
pub(crate) fn rms_norm(x: &[f32], g: &[f32], eps: f32, out: &mut [f32], d: usize) {
    for (xr, or) in x.chunks(d).zip(out.chunks_mut(d)) {
        let ss: f32 = xr.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let scale = 1.0 / (ss + eps).sqrt();
        for ((o, xi), gi) in or.iter_mut().zip(xr).zip(g) {
            *o = xi * scale * gi;
        }
    }
}
