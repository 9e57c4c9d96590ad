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
//!
//! A pass may hold several sequences packed end to end ([`Net::forward_packed`]): each token
//! attends only to the earlier tokens of its own sequence and its RoPE position counts from
//! the start of its sequence, so every sequence's activations are those of a pass of its own
//! (without LoRA bit for bit where the frozen products run on this crate's AVX-512 kernel:
//! they, attention and norms sum in the same order; the `gemm` crate used elsewhere, and the
//! LoRA products, may round differently). The frozen weights are dequantized once per
//! pass instead of once per sequence; the LoRA gradients sum over all the pass's tokens at
//! once (the same sum in another order). The tokens every sequence of a pass starts with (a
//! chat template's system prompt) can be held once: the later sequences attend to the first's
//! (`prefix` of [`Net::forward_packed`]), which saves their forward and backward.
//!
//! Everything heavy runs on the pool, split so that no result depends on the thread count:
//! the frozen products by tiles of weight rows (forward) or a fixed number of partial sums
//! (backward), the LoRA products by fixed blocks of tokens (their sums over tokens by fixed
//! blocks of output rows or columns), attention by heads, the elementwise parts by rows.

use rayon::prelude::*;
use rayon::ThreadPool;
use tailor::adapters::Target;
use tailor::model::config::{ModelConfig, RopeStyle};
use tailor::model::qmatrix::QMatrix;
use tailor::model::weights::ModelWeights;

use crate::kernels::{gemm_bcast, zeros};
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
    /// Softmax weights: per head, each sequence's `[len, len]` block (zero above the
    /// diagonal), `[heads, Σ len²]`.
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
    /// Lengths of the packed sequences (sum `n`).
    lens: Vec<usize>,
    /// Tokens of the first sequence the later ones share ([`Net::forward_packed`]).
    prefix: usize,
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

/// Per-token rotation tables (`[n, rope_dims / 2]`), positions counted from each sequence's
/// start.
struct Rope {
    cos: Vec<f32>,
    sin: Vec<f32>,
}

/// One packed sequence: its first token in the pass, its length, the offset of its attention
/// block in a head's weights, and `ctx`: how many tokens of the shared prefix (the pass's first
/// tokens) it attends to before its own (0 for the first sequence, which holds the prefix).
/// Its block is `[len, ctx + len]`, the prefix's keys first; its positions count from `ctx`.
#[derive(Clone, Copy)]
struct Seg {
    s0: usize,
    len: usize,
    p0: usize,
    ctx: usize,
}

/// Where the packed sequences are; every sequence after the first continues the first
/// `prefix` tokens of the first.
fn segments(lens: &[usize], prefix: usize) -> Vec<Seg> {
    let (mut t0, mut p0) = (0, 0);
    lens.iter()
        .enumerate()
        .map(|(i, &len)| {
            let ctx = if i == 0 { 0 } else { prefix };
            let s = Seg { s0: t0, len, p0, ctx };
            t0 += len;
            p0 += len * (ctx + len);
            s
        })
        .collect()
}

/// Attention weights per head of a pass: `Σ len·(ctx + len)`.
fn weights_len(lens: &[usize], prefix: usize) -> usize {
    segments(lens, prefix).iter().map(|g| g.len * (g.ctx + g.len)).sum()
}

impl<'a> Net<'a> {
    pub fn new(cfg: &'a ModelConfig, w: &'a ModelWeights, pool: &'a ThreadPool) -> Self {
        let inv_freq = cfg.rope_inv_freq(w.rope_freqs.as_deref());
        Self { pool, cfg, w, inv_freq }
    }

    pub fn context_length(&self) -> usize {
        self.cfg.context_length
    }

    fn rope_tables(&self, lens: &[usize], prefix: usize) -> Rope {
        let half = self.inv_freq.len();
        let n: usize = lens.iter().sum();
        let mut cos = vec![0f32; n * half];
        let mut sin = vec![0f32; n * half];
        for g in segments(lens, prefix) {
            for pos in 0..g.len {
                let t = g.s0 + pos;
                for (i, f) in self.inv_freq.iter().enumerate() {
                    let a = (g.ctx + pos) as f32 * f;
                    cos[t * half + i] = a.cos();
                    sin[t * half + i] = a.sin();
                }
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
        self.forward_packed(tokens, &[tokens.len()], 0, targets, lora, keep)
    }

    /// [`forward`](Self::forward) of several sequences in one pass: `tokens` is their
    /// concatenation, `lens` their lengths, and the targets' positions index `tokens`. Each
    /// sequence sees only itself (block-diagonal causal attention, positions from 0), so the
    /// log-probabilities are those of separate passes.
    ///
    /// With `prefix > 0` the sequences share their first `prefix` tokens (a system prompt):
    /// only the first sequence holds them, every later one is given without them and attends
    /// to the first's (its positions counting from `prefix`). The prefix's activations are
    /// those every sequence would compute (they depend on the prefix alone), so the
    /// log-probabilities are still those of separate passes; the prefix is computed once.
    pub fn forward_packed(
        &self,
        tokens: &[u32],
        lens: &[usize],
        prefix: usize,
        targets: &[(usize, u32)],
        lora: Option<&LoraParams>,
        keep: Keep,
    ) -> Result<(Vec<f32>, Option<Tape>)> {
        let cfg = self.cfg;
        let (n, d) = (tokens.len(), cfg.d_model);
        if n == 0 || lens.contains(&0) {
            return Err(Error::InvalidExample { index: 0, reason: "empty token sequence".into() });
        }
        assert_eq!(lens.iter().sum::<usize>(), n, "packed sequence lengths must add up to the tokens");
        assert!(prefix == 0 || (lens.len() > 1 && prefix <= lens[0]), "a shared prefix lies in the first of several sequences");
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
            return Err(Error::InvalidExample { index: 0, reason: format!("token {bad} outside the vocabulary") });
        }
        if targets.iter().any(|&(p, t)| p >= n || t as usize >= cfg.vocab_size) {
            return Err(Error::InvalidExample { index: 0, reason: "target outside the sequence or vocabulary".into() });
        }
        let rope = self.rope_tables(lens, prefix);
        let mut x = zeros(self.pool, n * d);
        for (t, &tok) in tokens.iter().enumerate() {
            self.w.token_embd.dequantize_row(tok as usize, &mut x[t * d..(t + 1) * d]);
        }
        let mut layers = Vec::new();
        for l in 0..cfg.n_layers {
            let (x_out, tape) = self.layer_forward(l, x, lens, prefix, lora, &rope);
            match keep {
                Keep::Nothing => {}
                Keep::All => layers.push(Saved::Full(Box::new(tape))),
                Keep::LayerInputs => layers.push(Saved::Input(tape.x_in)),
            }
            x = x_out;
        }
        let (xn, rstd_f) = rms_norm(self.pool, &x, &self.w.output_norm, cfg.rms_eps, d);
        let m = targets.len();
        let mut sel = vec![0f32; m * d];
        for (i, &(p, _)) in targets.iter().enumerate() {
            sel[i * d..(i + 1) * d].copy_from_slice(&xn[p * d..(p + 1) * d]);
        }
        let vocab = cfg.vocab_size;
        let mut probs = zeros(self.pool, m * vocab);
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
            lens: lens.to_vec(),
            prefix,
            layers,
            x_final: x,
            rstd_f,
            targets: targets.to_vec(),
            probs,
        });
        Ok((logp, tape))
    }

    /// Estimated bytes a forward pass with `keep` holds for its backward pass (sequences of
    /// `lens` tokens packed in one pass, sharing none of them, `m` scored positions),
    /// including the `[m, vocab]` softmax and its transient copy.
    pub fn activation_bytes(&self, lens: &[usize], m: usize, keep: Keep) -> usize {
        let c = self.cfg;
        let (qd, kvd) = (c.n_heads * c.head_dim, c.kv_dim());
        let n: usize = lens.iter().sum();
        let squares = weights_len(lens, 0);
        let per_layer = match keep {
            Keep::Nothing => 0,
            Keep::LayerInputs => n * c.d_model,
            Keep::All => n * (2 * c.d_model + 2 * qd + 2 * kvd + 2 * c.ffn_dim) + c.n_heads * squares,
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
        let mut dxn = zeros(self.pool, n * d);
        for (i, &(p, _)) in tape.targets.iter().enumerate() {
            dxn[p * d..(p + 1) * d].copy_from_slice(&dsel[i * d..(i + 1) * d]);
        }
        let mut dx = zeros(self.pool, n * d);
        rms_norm_back(self.pool, &dxn, &tape.x_final, &self.w.output_norm, &tape.rstd_f, d, &mut dx);
        let rope = self.rope_tables(&tape.lens, tape.prefix);
        let mut layers = tape.layers;
        for l in (0..cfg.n_layers).rev() {
            let lt = match layers.pop() {
                Some(Saved::Full(t)) => *t,
                Some(Saved::Input(x_in)) => self.layer_forward(l, x_in, &tape.lens, tape.prefix, Some(lora), &rope).1,
                None => unreachable!("a tape holds every layer"),
            };
            dx = self.layer_backward(l, &lt, dx, &tape.lens, tape.prefix, lora, grads, &rope);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn proj(&self, w: &QMatrix, bias: Option<&[f32]>, x: &[f32], n: usize, lora: Option<&LoraParams>, l: usize, t: Target) -> (Vec<f32>, Vec<f32>) {
        let mut y = zeros(self.pool, n * w.rows());
        qlinear_fwd(self.pool, w, x, n, &mut y);
        let mut u = Vec::new();
        if let Some((p, s)) = lora.and_then(|p| p.slot(l, t).map(|s| (p, s))) {
            let (r, din, dout) = (s.r, s.d_in, s.d_out);
            let a = &p.data[s.a..s.a + r * din];
            let b = &p.data[s.b..s.b + dout * r];
            u = vec![0f32; n * r];
            let mut bt = vec![0f32; r * dout];
            transpose_into(self.pool, b, dout, r, &mut bt);
            // u = x·Aᵀ;  y += s · u·Bᵀ, by blocks of tokens.
            self.pool.install(|| u.par_chunks_mut(LORA_ROWS * r).zip(y.par_chunks_mut(LORA_ROWS * dout)).enumerate().for_each(|(i, (ub, yb))| {
                let (t0, rows) = (i * LORA_ROWS, ub.len() / r);
                gemm(ub, M::new(&x[t0 * din..(t0 + rows) * din], rows, din), M::new(a, r, din).t(), false, 1.0);
                gemm_bcast(rows, dout, r, M::new(ub, rows, r), &bt, dout, yb, dout, true, p.scale);
            }));
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
        // Sums over tokens are split by output rows or columns, the rest by blocks of tokens:
        // every output is one task's, whatever the thread count.
        let mut g = vec![0f32; n * r];
        let mut da = vec![0f32; r * din];
        let (ga, gb) = grads.split_at_mut(s.b);
        let ga = &mut ga[s.a..s.a + r * din];
        let gb = &mut gb[..dout * r];
        self.pool.install(|| {
            // dB rows j0.. = s · dy[.., j0..]ᵀ·u
            gb.par_chunks_mut(LORA_COLS * r).enumerate().for_each(|(i, c)| {
                let (j0, rows) = (i * LORA_COLS, c.len() / r);
                gemm(c, M { data: &dy[j0..], rows, cols: n, rs: 1, cs: dout }, M::new(u, n, r), true, sc);
            });
            // g = dy·B
            g.par_chunks_mut(LORA_ROWS * r).enumerate().for_each(|(i, c)| {
                let (t0, rows) = (i * LORA_ROWS, c.len() / r);
                gemm(c, M::new(&dy[t0 * dout..(t0 + rows) * dout], rows, dout), M::new(b, dout, r), false, 1.0);
            });
            // dA columns c0.. = s · gᵀ·x[.., c0..] (as [r, width] blocks, added below)
            da.par_chunks_mut(LORA_COLS * r).enumerate().for_each(|(i, c)| {
                let (c0, w) = (i * LORA_COLS, c.len() / r);
                gemm_bcast(r, w, n, M::new(&g, n, r).t(), &x[c0..], din, c, w, false, sc);
            });
            // dx += s · g·A
            dx.par_chunks_mut(LORA_ROWS * din).enumerate().for_each(|(i, c)| {
                let (t0, rows) = (i * LORA_ROWS, c.len() / din);
                gemm_bcast(rows, din, r, M::new(&g[t0 * r..(t0 + rows) * r], rows, r), a, din, c, din, true, sc);
            });
        });
        for (i, c) in da.chunks(LORA_COLS * r).enumerate() {
            let (c0, w) = (i * LORA_COLS, c.len() / r);
            for k in 0..r {
                ga[k * din + c0..k * din + c0 + w].iter_mut().zip(&c[k * w..(k + 1) * w]).for_each(|(x, y)| *x += y);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn layer_forward(&self, l: usize, x_in: Vec<f32>, lens: &[usize], prefix: usize, lora: Option<&LoraParams>, rope: &Rope) -> (Vec<f32>, LayerTape) {
        let cfg = self.cfg;
        let n: usize = lens.iter().sum();
        let segs = segments(lens, prefix);
        let sq = weights_len(lens, prefix);
        let lw = &self.w.layers[l];
        let (d, hd, nh, nkv) = (cfg.d_model, cfg.head_dim, cfg.n_heads, cfg.n_kv_heads);
        let (qd, kvd) = (nh * hd, nkv * hd);
        let (xn1, rstd1) = rms_norm(self.pool, &x_in, &lw.attn_norm, cfg.rms_eps, d);
        let (mut q, uq) = self.proj(&lw.wq, lw.bq.as_deref(), &xn1, n, lora, l, Target::Q);
        let (mut k, uk) = self.proj(&lw.wk, lw.bk.as_deref(), &xn1, n, lora, l, Target::K);
        let (v, uv) = self.proj(&lw.wv, lw.bv.as_deref(), &xn1, n, lora, l, Target::V);
        self.rope(&mut q, n, nh, rope, false);
        self.rope(&mut k, n, nkv, rope, false);

        // Causal GQA attention within each packed sequence, one head per task.
        let group = nh / nkv;
        let scale = 1.0 / (hd as f32).sqrt();
        let kt = heads_transposed(&k, n, nkv, hd);
        // Buffers are allocated here, on the calling thread, and filled by the workers: memory
        // allocated on rayon's threads lands in glibc's per-thread arenas, which hold on to it
        // (about +300 MB of peak RSS on the real model).
        let mut probs = zeros(self.pool, nh * sq);
        let mut heads_out = zeros(self.pool, nh * n * hd);
        self.pool.install(|| probs.par_chunks_mut(sq).zip(heads_out.par_chunks_mut(n * hd)).enumerate().for_each(|(h, (ph, oh))| {
                let g = h / group;
                let ktg = &kt[g * hd * n..(g + 1) * hd * n];
                for &Seg { s0, len, p0, ctx } in &segs {
                    // Row i of the block: the prefix's `ctx` keys, then keys 0..=i of its own.
                    let w = ctx + len;
                    let p = &mut ph[p0..p0 + len * w];
                    // Row block i0..i1 of the scores only needs its own keys 0..i1 (causal).
                    for (i0, i1) in row_blocks(len) {
                        let qb = M { data: &q[(s0 + i0) * qd + h * hd..], rows: i1 - i0, cols: hd, rs: qd, cs: 1 };
                        if ctx > 0 {
                            gemm_bcast(i1 - i0, ctx, hd, qb, ktg, n, &mut p[i0 * w..], w, false, scale);
                        }
                        gemm_bcast(i1 - i0, i1, hd, qb, &ktg[s0..], n, &mut p[i0 * w + ctx..], w, false, scale);
                    }
                    for i in 0..len {
                        let row = &mut p[i * w..(i + 1) * w];
                        let seen = ctx + i + 1;
                        let max = row[..seen].iter().copied().fold(f32::NEG_INFINITY, f32::max);
                        let mut sum = 0f32;
                        for x in &mut row[..seen] {
                            *x = (*x - max).exp();
                            sum += *x;
                        }
                        let inv = 1.0 / sum;
                        row[..seen].iter_mut().for_each(|x| *x *= inv);
                        row[seen..].fill(0.0);
                    }
                    for (i0, i1) in row_blocks(len) {
                        if ctx > 0 {
                            let pb = M { data: &p[i0 * w..], rows: i1 - i0, cols: ctx, rs: w, cs: 1 };
                            gemm_bcast(i1 - i0, hd, ctx, pb, &v[g * hd..], kvd, &mut oh[(s0 + i0) * hd..], hd, false, 1.0);
                        }
                        let pb = M { data: &p[i0 * w + ctx..], rows: i1 - i0, cols: i1, rs: w, cs: 1 };
                        gemm_bcast(i1 - i0, hd, i1, pb, &v[s0 * kvd + g * hd..], kvd, &mut oh[(s0 + i0) * hd..], hd, ctx > 0, 1.0);
                    }
                }
            }));
        let mut att = zeros(self.pool, n * qd);
        for (h, o) in heads_out.chunks_exact(n * hd).enumerate() {
            for t in 0..n {
                att[t * qd + h * hd..t * qd + (h + 1) * hd].copy_from_slice(&o[t * hd..(t + 1) * hd]);
            }
        }
        drop(heads_out);
        let (o, uo) = self.proj(&lw.wo, None, &att, n, lora, l, Target::O);
        let mut x_mid = x_in.clone();
        x_mid.iter_mut().zip(&o).for_each(|(a, b)| *a += b);

        let (xn2, rstd2) = rms_norm(self.pool, &x_mid, &lw.ffn_norm, cfg.rms_eps, d);
        let (gate, ug) = self.proj(&lw.w_gate, None, &xn2, n, lora, l, Target::Gate);
        let (up, uu) = self.proj(&lw.w_up, None, &xn2, n, lora, l, Target::Up);
        let h = swiglu(self.pool, &gate, &up, cfg.ffn_dim);
        let (down, ud) = self.proj(&lw.w_down, None, &h, n, lora, l, Target::Down);
        let mut x_out = x_mid.clone();
        x_out.iter_mut().zip(&down).for_each(|(a, b)| *a += b);
        let tape = LayerTape {
            x_in, rstd1, q, k, v, uq, uk, uv, probs, att, uo, x_mid, rstd2, gate, up, ug, uu, ud,
        };
        (x_out, tape)
    }

    #[allow(clippy::too_many_arguments)]
    fn layer_backward(&self, l: usize, t: &LayerTape, dx_out: Vec<f32>, lens: &[usize], prefix: usize, lora: &LoraParams, grads: &mut [f32], rope: &Rope) -> Vec<f32> {
        let cfg = self.cfg;
        let n: usize = lens.iter().sum();
        let segs = segments(lens, prefix);
        let sq = weights_len(lens, prefix);
        let lw = &self.w.layers[l];
        let (d, hd, nh, nkv, ff) = (cfg.d_model, cfg.head_dim, cfg.n_heads, cfg.n_kv_heads, cfg.ffn_dim);
        let (qd, kvd) = (nh * hd, nkv * hd);

        // MLP.
        let mut dx_mid = dx_out;
        let mut dh = zeros(self.pool, n * ff);
        let h = swiglu(self.pool, &t.gate, &t.up, ff);
        self.proj_back(&lw.w_down, &h, &t.ud, &dx_mid, n, lora, l, Target::Down, grads, &mut dh);
        let mut dgate = zeros(self.pool, n * ff);
        let mut dup = zeros(self.pool, n * ff);
        let one = |(i, (dg, du)): (usize, (&mut [f32], &mut [f32]))| {
            let o = i * ROWS * ff;
            for (j, (dg, du)) in dg.iter_mut().zip(du.iter_mut()).enumerate() {
                let (g, dh) = (t.gate[o + j], dh[o + j]);
                let sg = 1.0 / (1.0 + (-g).exp());
                *du = dh * g * sg;
                *dg = dh * t.up[o + j] * sg * (1.0 + g * (1.0 - sg));
            }
        };
        if big(n * ff) {
            self.pool.install(|| dgate.par_chunks_mut(ROWS * ff).zip(dup.par_chunks_mut(ROWS * ff)).enumerate().for_each(one));
        } else {
            dgate.chunks_mut(ROWS * ff).zip(dup.chunks_mut(ROWS * ff)).enumerate().for_each(one);
        }
        drop((dh, h));
        let mut dxn2 = zeros(self.pool, n * d);
        let xn2 = rms_apply(self.pool, &t.x_mid, &lw.ffn_norm, &t.rstd2, d);
        self.proj_back(&lw.w_gate, &xn2, &t.ug, &dgate, n, lora, l, Target::Gate, grads, &mut dxn2);
        self.proj_back(&lw.w_up, &xn2, &t.uu, &dup, n, lora, l, Target::Up, grads, &mut dxn2);
        drop(xn2);
        rms_norm_back(self.pool, &dxn2, &t.x_mid, &lw.ffn_norm, &t.rstd2, d, &mut dx_mid);

        // Attention.
        let mut datt = zeros(self.pool, n * qd);
        self.proj_back(&lw.wo, &t.att, &t.uo, &dx_mid, n, lora, l, Target::O, grads, &mut datt);
        let group = nh / nkv;
        let scale = 1.0 / (hd as f32).sqrt();
        let vt = heads_transposed(&t.v, n, nkv, hd);
        // Allocated on this thread (see layer_forward), filled by the workers.
        let mut dp_all = zeros(self.pool, nh * sq);
        let mut dqkv = zeros(self.pool, nh * 3 * n * hd);
        self.pool.install(|| dp_all.par_chunks_mut(sq).zip(dqkv.par_chunks_mut(3 * n * hd)).enumerate().for_each(|(h, (dph, out))| {
                let g = h / group;
                let vtg = &vt[g * hd * n..(g + 1) * hd * n];
                let (dq, rest) = out.split_at_mut(n * hd);
                let (dk, dv) = rest.split_at_mut(n * hd);
                for &Seg { s0, len, p0, ctx } in &segs {
                    let w = ctx + len;
                    let p = &t.probs[h * sq + p0..h * sq + p0 + len * w];
                    let dp = &mut dph[p0..p0 + len * w];
                    // Only the causal part (the prefix's keys and own keys 0..i1 for query rows
                    // i0..i1) is computed; above the diagonal P is zero, so dS is too.
                    for (i0, i1) in row_blocks(len) {
                        let dob = M { data: &datt[(s0 + i0) * qd + h * hd..], rows: i1 - i0, cols: hd, rs: qd, cs: 1 };
                        if ctx > 0 {
                            gemm_bcast(i1 - i0, ctx, hd, dob, vtg, n, &mut dp[i0 * w..], w, false, 1.0);
                        }
                        gemm_bcast(i1 - i0, i1, hd, dob, &vtg[s0..], n, &mut dp[i0 * w + ctx..], w, false, 1.0);
                    }
                    // dS = P ∘ (dP − Σ_j P·dP).
                    for i in 0..len {
                        let (pr, dr) = (&p[i * w..(i + 1) * w], &mut dp[i * w..(i + 1) * w]);
                        let seen = ctx + i + 1;
                        let dot: f32 = pr[..seen].iter().zip(&dr[..seen]).map(|(a, b)| a * b).sum();
                        for j in 0..seen {
                            dr[j] = pr[j] * (dr[j] - dot);
                        }
                        dr[seen..].fill(0.0);
                    }
                    for (i0, i1) in row_blocks(len) {
                        // dq rows i0..i1 = scale · dS[i0..i1, ..] · K (the prefix's keys, then
                        // own keys ..i1)
                        if ctx > 0 {
                            let sb = M { data: &dp[i0 * w..], rows: i1 - i0, cols: ctx, rs: w, cs: 1 };
                            gemm_bcast(i1 - i0, hd, ctx, sb, &t.k[g * hd..], kvd, &mut dq[(s0 + i0) * hd..], hd, false, scale);
                        }
                        let sb = M { data: &dp[i0 * w + ctx..], rows: i1 - i0, cols: i1, rs: w, cs: 1 };
                        gemm_bcast(i1 - i0, hd, i1, sb, &t.k[s0 * kvd + g * hd..], kvd, &mut dq[(s0 + i0) * hd..], hd, ctx > 0, scale);
                        // dv / dk rows j0..j1 = Σ_{i >= j0} P[i, j]·dO[i] / scale · dS[i, j]·q[i]
                        let (j0, j1) = (i0, i1);
                        let pt = M { data: &p[j0 * w + ctx + j0..], rows: j1 - j0, cols: len - j0, rs: 1, cs: w };
                        gemm_bcast(j1 - j0, hd, len - j0, pt, &datt[(s0 + j0) * qd + h * hd..], qd, &mut dv[(s0 + j0) * hd..], hd, false, 1.0);
                        let st = M { data: &dp[j0 * w + ctx + j0..], rows: j1 - j0, cols: len - j0, rs: 1, cs: w };
                        gemm_bcast(j1 - j0, hd, len - j0, st, &t.q[(s0 + j0) * qd + h * hd..], qd, &mut dk[(s0 + j0) * hd..], hd, false, scale);
                    }
                    if ctx > 0 {
                        // This sequence's share of the prefix's dv / dk (rows 0..ctx, written by
                        // the first sequence, which comes first).
                        let pt = M { data: p, rows: ctx, cols: len, rs: 1, cs: w };
                        gemm_bcast(ctx, hd, len, pt, &datt[s0 * qd + h * hd..], qd, dv, hd, true, 1.0);
                        let st = M { data: dp, rows: ctx, cols: len, rs: 1, cs: w };
                        gemm_bcast(ctx, hd, len, st, &t.q[s0 * qd + h * hd..], qd, dk, hd, true, scale);
                    }
                }
            }));
        drop(dp_all);
        let mut dq = zeros(self.pool, n * qd);
        let mut dk = zeros(self.pool, n * kvd);
        let mut dv = zeros(self.pool, n * kvd);
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
        let mut dxn1 = zeros(self.pool, n * d);
        let xn1 = rms_apply(self.pool, &t.x_in, &lw.attn_norm, &t.rstd1, d);
        self.proj_back(&lw.wq, &xn1, &t.uq, &dq, n, lora, l, Target::Q, grads, &mut dxn1);
        self.proj_back(&lw.wk, &xn1, &t.uk, &dk, n, lora, l, Target::K, grads, &mut dxn1);
        self.proj_back(&lw.wv, &xn1, &t.uv, &dv, n, lora, l, Target::V, grads, &mut dxn1);
        let mut dx_in = dx_mid;
        rms_norm_back(self.pool, &dxn1, &t.x_in, &lw.attn_norm, &t.rstd1, d, &mut dx_in);
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

/// Token rows per task of the LoRA products; output rows (of dB) or columns (of dA) per task
/// of their sums over tokens. Fixed, so that the arithmetic does not depend on the thread
/// count.
const LORA_ROWS: usize = 64;
const LORA_COLS: usize = 64;

/// Rows per task of the row-wise loops below.
const ROWS: usize = 16;

/// Whether row-wise work on `len` values is worth the pool.
fn big(len: usize) -> bool {
    len >= 1 << 15
}

/// `f(first row, block of rows)` over blocks of [`ROWS`] rows of `out` (`width` values a row),
/// on the pool when `out` is big. Row-wise work: the split changes no result.
fn for_rows(pool: &ThreadPool, out: &mut [f32], width: usize, f: impl Fn(usize, &mut [f32]) + Send + Sync) {
    if big(out.len()) {
        pool.install(|| out.par_chunks_mut(ROWS * width).enumerate().for_each(|(i, c)| f(i * ROWS, c)));
    } else {
        out.chunks_mut(ROWS * width).enumerate().for_each(|(i, c)| f(i * ROWS, c));
    }
}

/// `silu(gate) · up`, elementwise.
fn swiglu(pool: &ThreadPool, gate: &[f32], up: &[f32], ff: usize) -> Vec<f32> {
    let mut h = zeros(pool, gate.len());
    for_rows(pool, &mut h, ff, |r0, hb| {
        let o = r0 * ff;
        for ((h, &g), &u) in hb.iter_mut().zip(&gate[o..]).zip(&up[o..]) {
            *h = silu(g) * u;
        }
    });
    h
}

/// `x / rms(x) · g` row by row, and each row's `1 / rms`.
fn rms_norm(pool: &ThreadPool, x: &[f32], g: &[f32], eps: f32, d: usize) -> (Vec<f32>, Vec<f32>) {
    let mut out = zeros(pool, x.len());
    let mut rstd = vec![0f32; x.len() / d];
    let one = |(i, (ob, rb)): (usize, (&mut [f32], &mut [f32]))| {
        for ((or, r), xr) in ob.chunks_mut(d).zip(rb.iter_mut()).zip(x[i * ROWS * d..].chunks(d)) {
            let ss: f32 = xr.iter().map(|v| v * v).sum::<f32>() / d as f32;
            *r = 1.0 / (ss + eps).sqrt();
            for ((o, xi), gi) in or.iter_mut().zip(xr).zip(g) {
                *o = xi * *r * gi;
            }
        }
    };
    if big(x.len()) {
        pool.install(|| out.par_chunks_mut(ROWS * d).zip(rstd.par_chunks_mut(ROWS)).enumerate().for_each(one));
    } else {
        out.chunks_mut(ROWS * d).zip(rstd.chunks_mut(ROWS)).enumerate().for_each(one);
    }
    (out, rstd)
}

/// `x · rstd · g` row by row, as [`rms_norm`] computes it (bit-identical).
fn rms_apply(pool: &ThreadPool, x: &[f32], g: &[f32], rstd: &[f32], d: usize) -> Vec<f32> {
    let mut out = zeros(pool, x.len());
    for_rows(pool, &mut out, d, |r0, ob| {
        for ((or, xr), &r) in ob.chunks_mut(d).zip(x[r0 * d..].chunks(d)).zip(&rstd[r0..]) {
            for ((o, xi), gi) in or.iter_mut().zip(xr).zip(g) {
                *o = xi * r * gi;
            }
        }
    });
    out
}

/// `dx += ∂(rms_norm)/∂x · dy`.
fn rms_norm_back(pool: &ThreadPool, dy: &[f32], x: &[f32], g: &[f32], rstd: &[f32], d: usize, dx: &mut [f32]) {
    for_rows(pool, dx, d, |r0, db| {
        for (((dxr, dyr), xr), &r) in db.chunks_mut(d).zip(dy[r0 * d..].chunks(d)).zip(x[r0 * d..].chunks(d)).zip(&rstd[r0..]) {
            let dot: f32 = dyr.iter().zip(g).zip(xr).map(|((a, b), c)| a * b * c).sum();
            let c = r * r * r * dot / d as f32;
            for (((o, &dyi), &gi), &xi) in dxr.iter_mut().zip(dyr).zip(g).zip(xr) {
                *o += r * dyi * gi - c * xi;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng as _, SeedableRng};
    use tailor::testing::{random_lora, TempDir, TinyModel};
    use tailor::{Engine, EngineConfig};

    fn tiny(seed: u64) -> (TempDir, Engine) {
        let mut m = TinyModel::default();
        m.seed = seed;
        m.weight_scale = 0.3;
        let dir = TempDir::new("packing");
        let path = dir.path("tiny.gguf");
        m.write(&path).unwrap();
        let mut c = EngineConfig::default();
        c.threads = 2;
        let engine = Engine::load(&path, c).unwrap();
        (dir, engine)
    }

    fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
        let num: f64 = got.iter().zip(want).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
        let den: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
        (num / den.max(1e-30)).sqrt()
    }

    /// Token sequences with their `(position, token)` targets.
    type Seq = (Vec<u32>, Vec<(usize, u32)>);

    /// `seqs` concatenated for one pass, each after the first without its first `prefix`
    /// tokens (the shared prefix the first one holds).
    fn pack(seqs: &[Seq], prefix: usize) -> (Vec<u32>, Vec<usize>, Vec<(usize, u32)>) {
        let (mut tokens, mut lens, mut targets) = (Vec::new(), Vec::new(), Vec::new());
        for (i, (t, tg)) in seqs.iter().enumerate() {
            let skip = if i == 0 { 0 } else { prefix };
            targets.extend(tg.iter().map(|&(p, tok)| (tokens.len() + p - skip, tok)));
            tokens.extend_from_slice(&t[skip..]);
            lens.push(t.len() - skip);
        }
        (tokens, lens, targets)
    }

    /// `seqs` packed in one pass (sharing `prefix` tokens) give the log-probabilities of
    /// separate passes within 1e-5 relative and the sum of their gradients within 1e-5
    /// relative L2; with activation checkpointing the packed pass is bit-identical.
    fn assert_packed_matches_separate(net: &Net<'_>, params: &LoraParams, seqs: &[Seq], prefix: usize, seed: u64) {
        let (mut want_logp, mut want_grads) = (Vec::new(), vec![0f32; params.len()]);
        for (tokens, targets) in seqs {
            let (lp, tape) = net.forward(tokens, targets, Some(params), Keep::All).unwrap();
            want_logp.extend(lp);
            net.backward(tape.unwrap(), 0.7, params, &mut want_grads);
        }
        let (tokens, lens, targets) = pack(seqs, prefix);
        let mut runs = Vec::new();
        for keep in [Keep::All, Keep::LayerInputs] {
            let (lp, tape) = net.forward_packed(&tokens, &lens, prefix, &targets, Some(params), keep).unwrap();
            let mut grads = vec![0f32; params.len()];
            net.backward(tape.unwrap(), 0.7, params, &mut grads);
            runs.push((lp, grads));
        }
        let (logp, grads) = &runs[0];
        assert_eq!(logp.len(), want_logp.len());
        for (i, (a, b)) in logp.iter().zip(&want_logp).enumerate() {
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "seed {seed}, prefix {prefix}: log p {i}: packed {a} vs separate {b}");
        }
        let e = rel_l2(grads, &want_grads);
        assert!(e < 1e-5, "seed {seed}, prefix {prefix}: gradients differ by {e} relative L2");
        assert!(want_grads.iter().any(|&g| g != 0.0));
        assert_eq!(&runs[1], &runs[0], "seed {seed}, prefix {prefix}: checkpointing changed the packed pass");
    }

    /// Sequences of different lengths (one past the 48-row attention block, one of a single
    /// scored token) packed in one pass give the log-probabilities of separate passes and
    /// the sum of their gradients. Without LoRA bit for bit (attention, frozen products and
    /// norms sum in the same order); with a large random adapter log-probabilities within
    /// 1e-5 relative (the `gemm` crate's LoRA products may block differently for another
    /// row count; measured ~3e-6) and gradients within 1e-5 relative L2 (their sums over
    /// tokens run in another order; measured ~3e-6). With activation checkpointing the
    /// packed pass is bit-identical to it without.
    #[test]
    fn packed_pass_equals_separate_passes() {
        let seed = rand::random::<u64>() % 1_000_000;
        let (_d, engine) = tiny(seed);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let net = Net::new(engine.model_config(), engine.weights(), &pool);
        let adapter = random_lora(&engine, 4, 0.3, seed + 1).unwrap();
        let params = LoraParams::from_adapter(&adapter, engine.base_shapes(), engine.qk_layout()).unwrap();
        let vocab = engine.model_config().vocab_size as u32;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        // (length, first scored position)
        let shapes = [(9usize, 4usize), (57, 20), (2, 0), (31, 29), (16, 5)];
        let seqs: Vec<Seq> = shapes
            .iter()
            .map(|&(n, first)| {
                let tokens: Vec<u32> = (0..n).map(|_| rng.random_range(0..vocab)).collect();
                let targets = (first..n - 1).map(|p| (p, tokens[p + 1])).collect();
                (tokens, targets)
            })
            .collect();

        // Without LoRA every product sums in the same order: bit-identical where this crate's
        // kernel runs (AVX-512F); the `gemm` crate (elsewhere) blocks the frozen products by
        // the row count, within 1e-5 relative (measured up to ~2e-6).
        let (tokens, lens, targets) = pack(&seqs, 0);
        let base: Vec<f32> = seqs.iter().flat_map(|(t, tg)| net.forward(t, tg, None, Keep::Nothing).unwrap().0).collect();
        let (packed_base, _) = net.forward_packed(&tokens, &lens, 0, &targets, None, Keep::Nothing).unwrap();
        if crate::kernels::has_bcast_kernel() {
            assert_eq!(packed_base, base, "seed {seed}: packing changed the base's log-probabilities");
        } else {
            for (i, (a, b)) in packed_base.iter().zip(&base).enumerate() {
                assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "seed {seed}: base log p {i}: packed {a} vs separate {b}");
            }
        }
        assert_packed_matches_separate(&net, &params, &seqs, 0, seed);
    }

    /// Sequences that share their first 13 tokens (one past a 48-row block after the prefix,
    /// one scored from its first own token), packed with the prefix held once: the
    /// log-probabilities of separate passes within 1e-5 relative and the sum of their
    /// gradients within 1e-5 relative L2 (the prefix's gradients now sum in one pass);
    /// with activation checkpointing bit for bit the same.
    #[test]
    fn shared_prefix_pass_equals_separate_passes() {
        let seed = rand::random::<u64>() % 1_000_000;
        let (_d, engine) = tiny(seed);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let net = Net::new(engine.model_config(), engine.weights(), &pool);
        let adapter = random_lora(&engine, 4, 0.3, seed + 1).unwrap();
        let params = LoraParams::from_adapter(&adapter, engine.base_shapes(), engine.qk_layout()).unwrap();
        let vocab = engine.model_config().vocab_size as u32;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let prefix = 13;
        let shared: Vec<u32> = (0..prefix).map(|_| rng.random_range(0..vocab)).collect();
        // (own length after the prefix, first scored position)
        let shapes = [(9usize, 15usize), (57, 13), (2, 13), (20, 30)];
        let seqs: Vec<Seq> = shapes
            .iter()
            .map(|&(own, first)| {
                let mut tokens = shared.clone();
                tokens.extend((0..own).map(|_| rng.random_range(0..vocab)));
                let targets = (first..tokens.len() - 1).map(|p| (p, tokens[p + 1])).collect();
                (tokens, targets)
            })
            .collect();
        assert_packed_matches_separate(&net, &params, &seqs, prefix, seed);
    }

    #[test]
    fn rms_norm_backward_matches_finite_differences() {
        let d = 6;
        let x: Vec<f32> = (0..2 * d).map(|i| (i as f32 * 0.7).sin() + 0.1).collect();
        let g: Vec<f32> = (0..d).map(|i| 1.0 + 0.1 * i as f32).collect();
        let w: Vec<f32> = (0..2 * d).map(|i| (i as f32 * 1.3).cos()).collect();
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let f = |x: &[f32]| -> f64 { rms_norm(&pool, x, &g, 1e-5, d).0.iter().zip(&w).map(|(a, b)| (*a * *b) as f64).sum() };
        let (_, rstd) = rms_norm(&pool, &x, &g, 1e-5, d);
        let mut dx = vec![0f32; 2 * d];
        rms_norm_back(&pool, &w, &x, &g, &rstd, d, &mut dx);
        for i in 0..2 * d {
            let (mut a, mut b) = (x.clone(), x.clone());
            a[i] += 1e-3;
            b[i] -= 1e-3;
            let fd = (f(&a) - f(&b)) / 2e-3;
            assert!((fd as f32 - dx[i]).abs() < 2e-3, "{i}: {fd} vs {}", dx[i]);
        }
    }
}
