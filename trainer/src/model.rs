//! The llama forward pass in f32 with its activations saved, and the backward pass through the
//! frozen quantized base to the LoRA parameters.
//!
//! The math is the decode path's (`tailor::decode::forward`): RMSNorm, q/k/v projections
//! (+ optional biases), RoPE (interleaved or NeoX, on the base file's row order), causal
//! grouped-query attention, output projection, SiLU-gated MLP, final RMSNorm, output head
//! (tied or not), each projection `y = W·x + s·B(A·x)`. Unlike the decode path it keeps
//! everything in f32 (no f16 KV cache, no 8-bit activations), so the gradients are those of one
//! smooth function. Gradients flow to the input of every quantized projection as
//! `dX = dY·W`, `W` dequantized a tile of rows at a time ([`crate::linalg`]).
//!
//! With activation checkpointing only each layer's input is kept; the backward pass runs that
//! layer's forward again before its backward.

use rayon::prelude::*;
use rayon::ThreadPool;
use tailor::adapters::Target;
use tailor::model::config::{ModelConfig, RopeStyle};
use tailor::model::qmatrix::QMatrix;
use tailor::model::weights::ModelWeights;

use crate::kernels::gemm_bcast;
use crate::linalg::{gemm, qlinear_bwd, qlinear_fwd, transpose_into, M};
use crate::params::LoraParams;
use crate::{Error, Result};

/// What the forward pass keeps for a backward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keep {
    /// Nothing (scoring, the DPO reference).
    Nothing,
    /// Every layer's activations.
    All,
    /// Only each layer's input (recomputed during the backward pass).
    LayerInputs,
}

/// Activations of one layer (the normalized inputs and the MLP's hidden product are not kept:
/// the backward pass recomputes them elementwise, bit-identically).
struct LayerTape {
    x_in: Vec<f32>,
    rstd1: Vec<f32>,
    /// After RoPE.
    q: Vec<f32>,
    /// After RoPE.
    k: Vec<f32>,
    v: Vec<f32>,
    uq: Vec<f32>,
    uk: Vec<f32>,
    uv: Vec<f32>,
    /// `[heads, n, n]` softmax weights (zero above the diagonal).
    probs: Vec<f32>,
    att: Vec<f32>,
    uo: Vec<f32>,
    x_mid: Vec<f32>,
    rstd2: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    ug: Vec<f32>,
    uu: Vec<f32>,
    ud: Vec<f32>,
}

enum Saved {
    Full(Box<LayerTape>),
    Input(Vec<f32>),
}

/// What a backward pass needs from a forward pass.
pub(crate) struct Tape {
    n: usize,
    tokens: Vec<u32>,
    layers: Vec<Saved>,
    x_final: Vec<f32>,
    rstd_f: Vec<f32>,
    /// `(position, target token)` of every scored prediction.
    targets: Vec<(usize, u32)>,
    /// Softmax of the logits of every target position, `[m, vocab]`.
    probs: Vec<f32>,
}

/// The frozen base, borrowed from an engine.
pub(crate) struct Net<'a> {
    /// Runs the parallel parts. Everything else (and every long-lived allocation) stays on
    /// the calling thread: memory allocated on rayon's workers lands in glibc's per-thread
    /// arenas, which keep it (+300 MB of peak RSS on the real model when the whole pass ran
    /// inside `install`).
    pool: &'a ThreadPool,
    cfg: &'a ModelConfig,
    w: &'a ModelWeights,
    inv_freq: Vec<f32>,
}

struct Rope {
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl<'a> Net<'a> {
    pub fn new(cfg: &'a ModelConfig, w: &'a ModelWeights, pool: &'a ThreadPool) -> Self {
        let inv_freq = cfg.rope_inv_freq(w.rope_freqs.as_deref());
        Self { pool, cfg, w, inv_freq }
    }

    pub fn context_length(&self) -> usize {
        self.cfg.context_length
    }

    fn rope_tables(&self, n: usize) -> Rope {
        let half = self.inv_freq.len();
        let mut cos = vec![0f32; n * half];
        let mut sin = vec![0f32; n * half];
        for t in 0..n {
            for (i, f) in self.inv_freq.iter().enumerate() {
                let a = t as f32 * f;
                cos[t * half + i] = a.cos();
                sin[t * half + i] = a.sin();
            }
        }
        Rope { cos, sin }
    }

    /// Rotates (`inverse == false`) or rotates back (the backward of the rotation) the first
    /// `rope_dims` dimensions of every head of `x` (`[n, heads·head_dim]`).
    fn rope(&self, x: &mut [f32], n: usize, heads: usize, r: &Rope, inverse: bool) {
        let hd = self.cfg.head_dim;
        let half = self.inv_freq.len();
        let sign = if inverse { -1.0 } else { 1.0 };
        for t in 0..n {
            let (c, s) = (&r.cos[t * half..(t + 1) * half], &r.sin[t * half..(t + 1) * half]);
            for h in 0..heads {
                let v = &mut x[(t * heads + h) * hd..(t * heads + h + 1) * hd];
                for i in 0..half {
                    let (ia, ib) = match self.cfg.rope_style {
                        RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                        RopeStyle::Neox => (i, i + half),
                    };
                    let (a, b, si) = (v[ia], v[ib], sign * s[i]);
                    v[ia] = a * c[i] - b * si;
                    v[ib] = a * si + b * c[i];
                }
            }
        }
    }

    /// Log-probabilities of `targets` (`(position, token)`: the logits at `position` scored
    /// against `token`) for `tokens`, and what a backward pass needs if `keep` says so.
    pub fn forward(
        &self,
        tokens: &[u32],
        targets: &[(usize, u32)],
        lora: Option<&LoraParams>,
        keep: Keep,
    ) -> Result<(Vec<f32>, Option<Tape>)> {
        let cfg = self.cfg;
        let (n, d) = (tokens.len(), cfg.d_model);
        if n == 0 {
            return Err(Error::InvalidExample { index: 0, reason: "empty token sequence".into() });
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
            return Err(Error::InvalidExample { index: 0, reason: format!("token {bad} outside the vocabulary") });
        }
        if targets.iter().any(|&(p, t)| p >= n || t as usize >= cfg.vocab_size) {
            return Err(Error::InvalidExample { index: 0, reason: "target outside the sequence or vocabulary".into() });
        }
        let rope = self.rope_tables(n);
        let mut x = vec![0f32; n * d];
        for (t, &tok) in tokens.iter().enumerate() {
            self.w.token_embd.dequantize_row(tok as usize, &mut x[t * d..(t + 1) * d]);
        }
        let mut layers = Vec::new();
        for l in 0..cfg.n_layers {
            let (x_out, tape) = self.layer_forward(l, x, n, lora, &rope);
            match keep {
                Keep::Nothing => {}
                Keep::All => layers.push(Saved::Full(Box::new(tape))),
                Keep::LayerInputs => layers.push(Saved::Input(tape.x_in)),
            }
            x = x_out;
        }
        let (xn, rstd_f) = rms_norm(&x, &self.w.output_norm, cfg.rms_eps, d);
        let m = targets.len();
        let mut sel = vec![0f32; m * d];
        for (i, &(p, _)) in targets.iter().enumerate() {
            sel[i * d..(i + 1) * d].copy_from_slice(&xn[p * d..(p + 1) * d]);
        }
        let vocab = cfg.vocab_size;
        let mut probs = vec![0f32; m * vocab];
        qlinear_fwd(self.pool, &self.w.output, &sel, m, &mut probs);
        let logp: Vec<f32> = self.pool.install(|| probs
            .par_chunks_mut(vocab)
            .zip(targets.par_iter())
            .map(|(row, &(_, tok))| {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f64;
                for v in row.iter_mut() {
                    *v = (*v - max).exp();
                    sum += *v as f64;
                }
                let inv = (1.0 / sum) as f32;
                let lp = row[tok as usize].ln() - (sum as f32).ln();
                row.iter_mut().for_each(|v| *v *= inv);
                lp
            })
            .collect());
        let tape = (keep != Keep::Nothing).then(|| Tape {
            n,
            tokens: tokens.to_vec(),
            layers,
            x_final: x,
            rstd_f,
            targets: targets.to_vec(),
            probs,
        });
        Ok((logp, tape))
    }

    /// Estimated bytes a forward pass with `keep` holds for its backward pass (`n` tokens, `m`
    /// scored positions), including the `[m, vocab]` softmax and its transient copy.
    pub fn activation_bytes(&self, n: usize, m: usize, keep: Keep) -> usize {
        let c = self.cfg;
        let (qd, kvd) = (c.n_heads * c.head_dim, c.kv_dim());
        let per_layer = match keep {
            Keep::Nothing => 0,
            Keep::LayerInputs => n * c.d_model,
            Keep::All => n * (2 * c.d_model + 2 * qd + 2 * kvd + 2 * c.ffn_dim + c.n_heads * n),
        };
        4 * (c.n_layers * per_layer + 2 * m * c.vocab_size + 4 * n * c.d_model)
    }

    /// Log-softmax of the logits of every position, `[n, vocab]`.
    pub fn log_softmax_all(&self, tokens: &[u32], lora: Option<&LoraParams>) -> Result<Vec<f32>> {
        let targets: Vec<(usize, u32)> = (0..tokens.len()).map(|p| (p, 0)).collect();
        let (_, tape) = self.forward(tokens, &targets, lora, Keep::LayerInputs)?;
        Ok(tape.expect("kept").probs.iter().map(|p| p.ln()).collect())
    }

    /// Adds to `grads` the gradient of `coef · Σ -logp(target)` (the forward's targets).
    pub fn backward(&self, tape: Tape, coef: f32, lora: &LoraParams, grads: &mut [f32]) {
        let cfg = self.cfg;
        let (n, d, vocab) = (tape.n, cfg.d_model, cfg.vocab_size);
        let m = tape.targets.len();
        let mut dlogits = tape.probs;
        for (i, &(_, tok)) in tape.targets.iter().enumerate() {
            let row = &mut dlogits[i * vocab..(i + 1) * vocab];
            row[tok as usize] -= 1.0;
            row.iter_mut().for_each(|v| *v *= coef);
        }
        let mut dsel = vec![0f32; m * d];
        qlinear_bwd(self.pool, &self.w.output, &dlogits, m, &mut dsel);
        drop(dlogits);
        let mut dxn = vec![0f32; n * d];
        for (i, &(p, _)) in tape.targets.iter().enumerate() {
            dxn[p * d..(p + 1) * d].copy_from_slice(&dsel[i * d..(i + 1) * d]);
        }
        let mut dx = vec![0f32; n * d];
        rms_norm_back(&dxn, &tape.x_final, &self.w.output_norm, &tape.rstd_f, d, &mut dx);
        let rope = self.rope_tables(n);
        let _ = &tape.tokens;
        let mut layers = tape.layers;
        for l in (0..cfg.n_layers).rev() {
            let lt = match layers.pop() {
                Some(Saved::Full(t)) => *t,
                Some(Saved::Input(x_in)) => self.layer_forward(l, x_in, n, Some(lora), &rope).1,
                None => unreachable!("a tape holds every layer"),
            };
            dx = self.layer_backward(l, &lt, dx, n, lora, grads, &rope);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn proj(&self, w: &QMatrix, bias: Option<&[f32]>, x: &[f32], n: usize, lora: Option<&LoraParams>, l: usize, t: Target) -> (Vec<f32>, Vec<f32>) {
        let mut y = vec![0f32; n * w.rows()];
        qlinear_fwd(self.pool, w, x, n, &mut y);
        let mut u = Vec::new();
        if let Some((p, s)) = lora.and_then(|p| p.slot(l, t).map(|s| (p, s))) {
            let a = &p.data[s.a..s.a + s.r * s.d_in];
            let b = &p.data[s.b..s.b + s.d_out * s.r];
            u = vec![0f32; n * s.r];
            gemm(&mut u, M::new(x, n, s.d_in), M::new(a, s.r, s.d_in).t(), false, 1.0);
            let mut bt = vec![0f32; s.r * s.d_out];
            transpose_into(self.pool, b, s.d_out, s.r, &mut bt);
            gemm_bcast(n, s.d_out, s.r, M::new(&u, n, s.r), &bt, s.d_out, &mut y, s.d_out, true, p.scale);
        }
        if let Some(b) = bias {
            for row in y.chunks_mut(b.len()) {
                row.iter_mut().zip(b).for_each(|(yi, bi)| *yi += bi);
            }
        }
        (y, u)
    }

    /// `dx += dy·W + s·(dy·B)·A`; the LoRA gradients of `(l, t)` into `grads`.
    #[allow(clippy::too_many_arguments)]
    fn proj_back(&self, w: &QMatrix, x: &[f32], u: &[f32], dy: &[f32], n: usize, lora: &LoraParams, l: usize, t: Target, grads: &mut [f32], dx: &mut [f32]) {
        qlinear_bwd(self.pool, w, dy, n, dx);
        let Some(s) = lora.slot(l, t) else { return };
        let (r, din, dout, sc) = (s.r, s.d_in, s.d_out, lora.scale);
        let a = &lora.data[s.a..s.a + r * din];
        let b = &lora.data[s.b..s.b + dout * r];
        // dB = s · dyᵀ·u
        gemm(&mut grads[s.b..s.b + dout * r], M::new(dy, n, dout).t(), M::new(u, n, r), true, sc);
        // g = dy·B;  dA = s · gᵀ·x;  dx += s · g·A
        let mut g = vec![0f32; n * r];
        gemm(&mut g, M::new(dy, n, dout), M::new(b, dout, r), false, 1.0);
        gemm_bcast(r, din, n, M::new(&g, n, r).t(), x, din, &mut grads[s.a..s.a + r * din], din, true, sc);
        gemm_bcast(n, din, r, M::new(&g, n, r), a, din, dx, din, true, sc);
    }

    fn layer_forward(&self, l: usize, x_in: Vec<f32>, n: usize, lora: Option<&LoraParams>, rope: &Rope) -> (Vec<f32>, LayerTape) {
        let cfg = self.cfg;
        let lw = &self.w.layers[l];
        let (d, hd, nh, nkv) = (cfg.d_model, cfg.head_dim, cfg.n_heads, cfg.n_kv_heads);
        let (qd, kvd) = (nh * hd, nkv * hd);
        let (xn1, rstd1) = rms_norm(&x_in, &lw.attn_norm, cfg.rms_eps, d);
        let (mut q, uq) = self.proj(&lw.wq, lw.bq.as_deref(), &xn1, n, lora, l, Target::Q);
        let (mut k, uk) = self.proj(&lw.wk, lw.bk.as_deref(), &xn1, n, lora, l, Target::K);
        let (v, uv) = self.proj(&lw.wv, lw.bv.as_deref(), &xn1, n, lora, l, Target::V);
        self.rope(&mut q, n, nh, rope, false);
        self.rope(&mut k, n, nkv, rope, false);

        // Causal GQA attention, one head per task.
        let group = nh / nkv;
        let scale = 1.0 / (hd as f32).sqrt();
        let kt = heads_transposed(&k, n, nkv, hd);
        // Buffers are allocated here, on the calling thread, and filled by the workers: memory
        // allocated on rayon's threads lands in glibc's per-thread arenas, which hold on to it
        // (about +300 MB of peak RSS on the real model).
        let mut probs = vec![0f32; nh * n * n];
        let mut heads_out = vec![0f32; nh * n * hd];
        self.pool.install(|| probs.par_chunks_mut(n * n).zip(heads_out.par_chunks_mut(n * hd)).enumerate().for_each(|(h, (p, o))| {
                let g = h / group;
                let ktg = &kt[g * hd * n..(g + 1) * hd * n];
                // Row block i0..i1 of the scores only needs keys 0..i1 (causal).
                for (i0, i1) in row_blocks(n) {
                    let qb = M { data: &q[i0 * qd + h * hd..], rows: i1 - i0, cols: hd, rs: qd, cs: 1 };
                    gemm_bcast(i1 - i0, i1, hd, qb, ktg, n, &mut p[i0 * n..], n, false, scale);
                }
                for i in 0..n {
                    let row = &mut p[i * n..(i + 1) * n];
                    let max = row[..=i].iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0f32;
                    for x in &mut row[..=i] {
                        *x = (*x - max).exp();
                        sum += *x;
                    }
                    let inv = 1.0 / sum;
                    row[..=i].iter_mut().for_each(|x| *x *= inv);
                    row[i + 1..].fill(0.0);
                }
                for (i0, i1) in row_blocks(n) {
                    let pb = M { data: &p[i0 * n..], rows: i1 - i0, cols: i1, rs: n, cs: 1 };
                    gemm_bcast(i1 - i0, hd, i1, pb, &v[g * hd..], kvd, &mut o[i0 * hd..], hd, false, 1.0);
                }
            }));
        let mut att = vec![0f32; n * qd];
        for (h, o) in heads_out.chunks_exact(n * hd).enumerate() {
            for t in 0..n {
                att[t * qd + h * hd..t * qd + (h + 1) * hd].copy_from_slice(&o[t * hd..(t + 1) * hd]);
            }
        }
        drop(heads_out);
        let (o, uo) = self.proj(&lw.wo, None, &att, n, lora, l, Target::O);
        let mut x_mid = x_in.clone();
        x_mid.iter_mut().zip(&o).for_each(|(a, b)| *a += b);

        let (xn2, rstd2) = rms_norm(&x_mid, &lw.ffn_norm, cfg.rms_eps, d);
        let (gate, ug) = self.proj(&lw.w_gate, None, &xn2, n, lora, l, Target::Gate);
        let (up, uu) = self.proj(&lw.w_up, None, &xn2, n, lora, l, Target::Up);
        let h: Vec<f32> = gate.iter().zip(&up).map(|(&g, &u)| silu(g) * u).collect();
        let (down, ud) = self.proj(&lw.w_down, None, &h, n, lora, l, Target::Down);
        let mut x_out = x_mid.clone();
        x_out.iter_mut().zip(&down).for_each(|(a, b)| *a += b);
        let tape = LayerTape {
            x_in, rstd1, q, k, v, uq, uk, uv, probs, att, uo, x_mid, rstd2, gate, up, ug, uu, ud,
        };
        (x_out, tape)
    }

    #[allow(clippy::too_many_arguments)]
    fn layer_backward(&self, l: usize, t: &LayerTape, dx_out: Vec<f32>, n: usize, lora: &LoraParams, grads: &mut [f32], rope: &Rope) -> Vec<f32> {
        let cfg = self.cfg;
        let lw = &self.w.layers[l];
        let (d, hd, nh, nkv, ff) = (cfg.d_model, cfg.head_dim, cfg.n_heads, cfg.n_kv_heads, cfg.ffn_dim);
        let (qd, kvd) = (nh * hd, nkv * hd);

        // MLP.
        let mut dx_mid = dx_out;
        let mut dh = vec![0f32; n * ff];
        let h: Vec<f32> = t.gate.iter().zip(&t.up).map(|(&g, &u)| silu(g) * u).collect();
        self.proj_back(&lw.w_down, &h, &t.ud, &dx_mid, n, lora, l, Target::Down, grads, &mut dh);
        let mut dgate = vec![0f32; n * ff];
        let mut dup = vec![0f32; n * ff];
        for i in 0..n * ff {
            let g = t.gate[i];
            let sg = 1.0 / (1.0 + (-g).exp());
            dup[i] = dh[i] * g * sg;
            dgate[i] = dh[i] * t.up[i] * sg * (1.0 + g * (1.0 - sg));
        }
        drop((dh, h));
        let mut dxn2 = vec![0f32; n * d];
        let xn2 = rms_apply(&t.x_mid, &lw.ffn_norm, &t.rstd2, d);
        self.proj_back(&lw.w_gate, &xn2, &t.ug, &dgate, n, lora, l, Target::Gate, grads, &mut dxn2);
        self.proj_back(&lw.w_up, &xn2, &t.uu, &dup, n, lora, l, Target::Up, grads, &mut dxn2);
        drop(xn2);
        rms_norm_back(&dxn2, &t.x_mid, &lw.ffn_norm, &t.rstd2, d, &mut dx_mid);

        // Attention.
        let mut datt = vec![0f32; n * qd];
        self.proj_back(&lw.wo, &t.att, &t.uo, &dx_mid, n, lora, l, Target::O, grads, &mut datt);
        let group = nh / nkv;
        let scale = 1.0 / (hd as f32).sqrt();
        let vt = heads_transposed(&t.v, n, nkv, hd);
        // Allocated on this thread (see layer_forward), filled by the workers.
        let mut dp_all = vec![0f32; nh * n * n];
        let mut dqkv = vec![0f32; nh * 3 * n * hd];
        self.pool.install(|| dp_all.par_chunks_mut(n * n).zip(dqkv.par_chunks_mut(3 * n * hd)).enumerate().for_each(|(h, (dp, out))| {
                let g = h / group;
                let p = &t.probs[h * n * n..(h + 1) * n * n];
                let vtg = &vt[g * hd * n..(g + 1) * hd * n];
                // Only the causal part (keys 0..i1 for query rows i0..i1) is computed; above
                // the diagonal P is zero, so dS is too.
                for (i0, i1) in row_blocks(n) {
                    let dob = M { data: &datt[i0 * qd + h * hd..], rows: i1 - i0, cols: hd, rs: qd, cs: 1 };
                    gemm_bcast(i1 - i0, i1, hd, dob, vtg, n, &mut dp[i0 * n..], n, false, 1.0);
                }
                // dS = P ∘ (dP − Σ_j P·dP).
                for i in 0..n {
                    let (pr, dr) = (&p[i * n..(i + 1) * n], &mut dp[i * n..(i + 1) * n]);
                    let dot: f32 = pr[..=i].iter().zip(&dr[..=i]).map(|(a, b)| a * b).sum();
                    for j in 0..=i {
                        dr[j] = pr[j] * (dr[j] - dot);
                    }
                    dr[i + 1..].fill(0.0);
                }
                let (dq, rest) = out.split_at_mut(n * hd);
                let (dk, dv) = rest.split_at_mut(n * hd);
                for (i0, i1) in row_blocks(n) {
                    // dq rows i0..i1 = scale · dS[i0..i1, ..i1] · K[..i1]
                    let sb = M { data: &dp[i0 * n..], rows: i1 - i0, cols: i1, rs: n, cs: 1 };
                    gemm_bcast(i1 - i0, hd, i1, sb, &t.k[g * hd..], kvd, &mut dq[i0 * hd..], hd, false, scale);
                    // dv / dk rows j0..j1 = Σ_{i >= j0} P[i, j]·dO[i] / scale · dS[i, j]·q[i]
                    let (j0, j1) = (i0, i1);
                    let pt = M { data: &p[j0 * n + j0..], rows: j1 - j0, cols: n - j0, rs: 1, cs: n };
                    gemm_bcast(j1 - j0, hd, n - j0, pt, &datt[j0 * qd + h * hd..], qd, &mut dv[j0 * hd..], hd, false, 1.0);
                    let st = M { data: &dp[j0 * n + j0..], rows: j1 - j0, cols: n - j0, rs: 1, cs: n };
                    gemm_bcast(j1 - j0, hd, n - j0, st, &t.q[j0 * qd + h * hd..], qd, &mut dk[j0 * hd..], hd, false, scale);
                }
            }));
        drop(dp_all);
        let mut dq = vec![0f32; n * qd];
        let mut dk = vec![0f32; n * kvd];
        let mut dv = vec![0f32; n * kvd];
        for (h, o) in dqkv.chunks_exact(3 * n * hd).enumerate() {
            let (dqh, rest) = o.split_at(n * hd);
            let (dkh, dvh) = rest.split_at(n * hd);
            let g = h / group;
            for i in 0..n {
                dq[i * qd + h * hd..i * qd + (h + 1) * hd].copy_from_slice(&dqh[i * hd..(i + 1) * hd]);
                let o = i * kvd + g * hd;
                dk[o..o + hd].iter_mut().zip(&dkh[i * hd..(i + 1) * hd]).for_each(|(a, b)| *a += b);
                dv[o..o + hd].iter_mut().zip(&dvh[i * hd..(i + 1) * hd]).for_each(|(a, b)| *a += b);
            }
        }
        drop(dqkv);
        self.rope(&mut dq, n, nh, rope, true);
        self.rope(&mut dk, n, nkv, rope, true);
        let mut dxn1 = vec![0f32; n * d];
        let xn1 = rms_apply(&t.x_in, &lw.attn_norm, &t.rstd1, d);
        self.proj_back(&lw.wq, &xn1, &t.uq, &dq, n, lora, l, Target::Q, grads, &mut dxn1);
        self.proj_back(&lw.wk, &xn1, &t.uk, &dk, n, lora, l, Target::K, grads, &mut dxn1);
        self.proj_back(&lw.wv, &xn1, &t.uv, &dv, n, lora, l, Target::V, grads, &mut dxn1);
        let mut dx_in = dx_mid;
        rms_norm_back(&dxn1, &t.x_in, &lw.attn_norm, &t.rstd1, d, &mut dx_in);
        dx_in
    }
}

/// Query-row blocks of the causal attention products.
fn row_blocks(n: usize) -> impl Iterator<Item = (usize, usize)> {
    const RB: usize = 48;
    (0..n).step_by(RB).map(move |i0| (i0, (i0 + RB).min(n)))
}

/// `[heads][head_dim, n]`: each head's `[n, head_dim]` columns of `x` (`[n, heads·head_dim]`)
/// transposed.
fn heads_transposed(x: &[f32], n: usize, heads: usize, hd: usize) -> Vec<f32> {
    let w = heads * hd;
    let mut out = vec![0f32; n * w];
    for h in 0..heads {
        let o = &mut out[h * hd * n..(h + 1) * hd * n];
        for t in 0..n {
            for c in 0..hd {
                o[c * n + t] = x[t * w + h * hd + c];
            }
        }
    }
    out
}

#[inline]
fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `x / rms(x) · g` row by row, and each row's `1 / rms`.
fn rms_norm(x: &[f32], g: &[f32], eps: f32, d: usize) -> (Vec<f32>, Vec<f32>) {
    let mut out = vec![0f32; x.len()];
    let mut rstd = Vec::with_capacity(x.len() / d);
    for (xr, or) in x.chunks(d).zip(out.chunks_mut(d)) {
        let ss: f32 = xr.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let r = 1.0 / (ss + eps).sqrt();
        for ((o, xi), gi) in or.iter_mut().zip(xr).zip(g) {
            *o = xi * r * gi;
        }
        rstd.push(r);
    }
    (out, rstd)
}

/// `x · rstd · g` row by row, as [`rms_norm`] computes it (bit-identical).
fn rms_apply(x: &[f32], g: &[f32], rstd: &[f32], d: usize) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    for ((xr, or), &r) in x.chunks(d).zip(out.chunks_mut(d)).zip(rstd) {
        for ((o, xi), gi) in or.iter_mut().zip(xr).zip(g) {
            *o = xi * r * gi;
        }
    }
    out
}

/// `dx += ∂(rms_norm)/∂x · dy`.
fn rms_norm_back(dy: &[f32], x: &[f32], g: &[f32], rstd: &[f32], d: usize, dx: &mut [f32]) {
    for (((dyr, xr), dxr), &r) in dy.chunks(d).zip(x.chunks(d)).zip(dx.chunks_mut(d)).zip(rstd) {
        let dot: f32 = dyr.iter().zip(g).zip(xr).map(|((a, b), c)| a * b * c).sum();
        let c = r * r * r * dot / d as f32;
        for (((o, &dyi), &gi), &xi) in dxr.iter_mut().zip(dyr).zip(g).zip(xr) {
            *o += r * dyi * gi - c * xi;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_backward_matches_finite_differences() {
        let d = 6;
        let x: Vec<f32> = (0..2 * d).map(|i| (i as f32 * 0.7).sin() + 0.1).collect();
        let g: Vec<f32> = (0..d).map(|i| 1.0 + 0.1 * i as f32).collect();
        let w: Vec<f32> = (0..2 * d).map(|i| (i as f32 * 1.3).cos()).collect();
        let f = |x: &[f32]| -> f64 { rms_norm(x, &g, 1e-5, d).0.iter().zip(&w).map(|(a, b)| (*a * *b) as f64).sum() };
        let (_, rstd) = rms_norm(&x, &g, 1e-5, d);
        let mut dx = vec![0f32; 2 * d];
        rms_norm_back(&w, &x, &g, &rstd, d, &mut dx);
        for i in 0..2 * d {
            let (mut a, mut b) = (x.clone(), x.clone());
            a[i] += 1e-3;
            b[i] -= 1e-3;
            let fd = (f(&a) - f(&b)) / 2e-3;
            assert!((fd as f32 - dx[i]).abs() < 2e-3, "{i}: {fd} vs {}", dx[i]);
        }
    }
}
