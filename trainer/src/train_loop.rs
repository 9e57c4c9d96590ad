//! The training loop: data order, SFT and DPO losses, gradient accumulation, clipping, AdamW,
//! the schedule, progress, cancellation, limits and checkpoints.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tailor::adapters::LoraAdapter;
use tailor::{Engine, Flow};

use crate::checkpoint::{self, Meta, State};
use crate::config::{DpoReference, TrainConfig, TrainData};
use crate::model::{Keep, Net};
use crate::optim::{clip_grad_norm, lr_at, AdamW};
use crate::params::LoraParams;
use crate::rng::Rng;
use crate::{Error, Result};

/// Stops a run from any thread (checked between sequences; the step in progress is dropped,
/// the run ends at the last finished step). Cheap to clone, `Send + Sync`.
#[derive(Debug, Clone, Default)]
pub struct CancelHandle(Arc<AtomicBool>);

impl CancelHandle {
    /// Asks the run to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
    /// Whether [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Reported after every optimizer step.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Progress {
    /// Optimizer steps done (1-based; counts the steps of a resumed run's earlier part).
    pub step: usize,
    /// Steps the run will do in all.
    pub total_steps: usize,
    /// Epoch the step's last example came from (0-based).
    pub epoch: usize,
    /// Loss of this step (SFT token mean + weighted DPO mean).
    pub loss: f32,
    /// Learning rate used for this step.
    pub learning_rate: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    /// Trained tokens (sequences run with a backward pass) per second in this process.
    pub tokens_per_s: f64,
    /// Time since this process started the run.
    pub elapsed: Duration,
    /// Estimated time to the last step, at the pace so far.
    pub eta: Duration,
}

/// Why a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopReason {
    /// Every step was done.
    Completed,
    /// The progress callback returned [`Flow::Stop`].
    Callback,
    /// A [`CancelHandle`] was used.
    Cancelled,
    /// `max_seconds` passed.
    TimeLimit,
}

/// Figures of a finished (or stopped) run.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct TrainMetrics {
    /// Optimizer steps done in all (including those before a resume).
    pub steps: usize,
    /// Steps the full run has.
    pub total_steps: usize,
    /// Step the run resumed from, if it did.
    pub resumed_from: Option<usize>,
    /// Loss of every step done, in order (including those before a resume).
    pub losses: Vec<f32>,
    /// Tokens of the sequences trained with a backward pass, in all.
    pub trained_tokens: u64,
    /// Trained tokens per second in this process.
    pub tokens_per_s: f64,
    /// Wall time of this process's part.
    pub elapsed: Duration,
    /// Why it ended.
    pub stop: StopReason,
}

/// What a run produces.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TrainOutput {
    /// The trained adapter, in PEFT's layout (save it with `tailor_adapters::peft::save`),
    /// carrying the base's fingerprint.
    pub adapter: LoraAdapter,
    /// Figures of the run.
    pub metrics: TrainMetrics,
}

/// One sequence to score: tokens and the `(position, token)` predictions that count.
pub(crate) struct Seq {
    pub tokens: Vec<u32>,
    pub targets: Vec<(usize, u32)>,
}

/// `prompt ++ answer` cut to `max_len`, scored on the answer tokens only.
pub(crate) fn sequence(prompt: &[u32], answer: &[u32], max_len: usize) -> Seq {
    let mut tokens: Vec<u32> = prompt.iter().chain(answer).copied().collect();
    tokens.truncate(max_len);
    let first = prompt.len().max(1);
    let targets = (first..tokens.len()).map(|i| (i - 1, tokens[i])).collect();
    Seq { tokens, targets }
}

enum Item {
    Sft(Seq),
    Pref { chosen: Seq, rejected: Seq, keep: Keep },
}

/// One forward/backward pass of a step.
enum Pass<'a> {
    /// SFT examples packed end to end.
    Sft(Vec<&'a Seq>, Keep),
    /// One DPO pair (an index into the items), unpacked.
    Pref(usize),
}

/// SFT sequences concatenated for one pass. The tokens all of them start with (a chat
/// template's system prompt, up to the first scored position of any) are kept once, in the
/// first sequence, and shared by the others ([`Net::forward_packed`]'s `prefix`).
struct Packed {
    tokens: Vec<u32>,
    lens: Vec<usize>,
    prefix: usize,
    targets: Vec<(usize, u32)>,
}

impl Packed {
    fn new(seqs: &[&Seq]) -> Self {
        let prefix = shared_prefix(seqs);
        let mut p = Packed { tokens: Vec::new(), lens: Vec::new(), prefix, targets: Vec::new() };
        for (i, s) in seqs.iter().enumerate() {
            let skip = if i == 0 { 0 } else { prefix };
            let t0 = p.tokens.len();
            p.tokens.extend_from_slice(&s.tokens[skip..]);
            p.lens.push(s.tokens.len() - skip);
            p.targets.extend(s.targets.iter().map(|&(pos, tok)| (t0 + pos - skip, tok)));
        }
        p
    }
}

/// How many first tokens every one of several sequences shares, stopping at the first scored
/// position of any (a scored position's logits must be computed in its own sequence); 0 for
/// one sequence.
fn shared_prefix(seqs: &[&Seq]) -> usize {
    let [first, rest @ ..] = seqs else { return 0 };
    if rest.is_empty() {
        return 0;
    }
    let limit = seqs.iter().map(|s| s.targets.first().map_or(s.tokens.len().saturating_sub(1), |t| t.0)).min().unwrap_or(0);
    let mut n = 0;
    while n < limit && rest.iter().all(|s| s.tokens.get(n) == first.tokens.get(n)) {
        n += 1;
    }
    n
}

/// Trains LoRA adapters on one engine's base.
#[derive(Debug)]
pub struct Trainer {
    engine: Engine,
    config: TrainConfig,
    initial: Option<LoraAdapter>,
    cancel: CancelHandle,
}

/// A run on a background thread.
#[derive(Debug)]
pub struct TrainJob {
    handle: std::thread::JoinHandle<Result<TrainOutput>>,
    cancel: CancelHandle,
}

impl TrainJob {
    /// A handle that stops the run.
    pub fn cancel_handle(&self) -> CancelHandle {
        self.cancel.clone()
    }
    /// Whether the run has ended.
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }
    /// Waits for the run's end.
    pub fn join(self) -> Result<TrainOutput> {
        match self.handle.join() {
            Ok(r) => r,
            Err(p) => {
                let message = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Err(Error::Panicked { message })
            }
        }
    }
}

impl Trainer {
    /// A trainer for `engine`'s base (the engine is shared, not copied); checks `config`.
    pub fn new(engine: &Engine, config: TrainConfig) -> Result<Self> {
        let c = &config;
        let bad = |r: &str| Err(Error::invalid_config(r));
        if c.lora_rank == 0 || c.targets.is_empty() {
            return bad("lora_rank and targets must be non-zero");
        }
        if !(c.learning_rate.is_finite() && c.learning_rate > 0.0) {
            return bad("learning_rate must be positive");
        }
        if !(0.0..1.0).contains(&c.adam_beta1) || !(0.0..1.0).contains(&c.adam_beta2) || c.adam_eps <= 0.0 {
            return bad("adam betas must be in [0, 1) and eps positive");
        }
        if c.batch_size == 0 || c.grad_accum_steps == 0 || c.max_seq_len < 2 {
            return bad("batch_size, grad_accum_steps must be >= 1 and max_seq_len >= 2");
        }
        if c.max_steps == Some(0) || (c.max_steps.is_none() && c.epochs == 0) {
            return bad("the run has no steps (epochs or max_steps is 0)");
        }
        if c.dpo_beta.is_nan() || c.dpo_beta <= 0.0 || !(0.0..=1.0).contains(&c.min_lr_ratio) || c.weight_decay < 0.0 {
            return bad("dpo_beta must be positive, min_lr_ratio in [0, 1], weight_decay >= 0");
        }
        Ok(Self { engine: engine.clone(), config, initial: None, cancel: CancelHandle::default() })
    }

    /// Starts from `adapter` (PEFT layout, e.g. the version being replaced) instead of a fresh
    /// initialisation; its rank, alpha and targets replace the configuration's.
    pub fn with_initial_adapter(mut self, adapter: LoraAdapter) -> Result<Self> {
        LoraParams::from_adapter(&adapter, self.engine.base_shapes(), self.engine.qk_layout())?;
        self.initial = Some(adapter);
        Ok(self)
    }

    /// The configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// A handle that stops this trainer's runs.
    pub fn cancel_handle(&self) -> CancelHandle {
        self.cancel.clone()
    }

    /// Runs on a background thread; `progress` is called there after every step.
    pub fn spawn<F>(self, data: TrainData, mut progress: F) -> TrainJob
    where
        F: FnMut(&Progress) -> Flow + Send + 'static,
    {
        let cancel = self.cancel.clone();
        let handle = std::thread::Builder::new()
            .name("tailor-train".into())
            .spawn(move || self.train(&data, &mut progress))
            .expect("spawning the training thread");
        TrainJob { handle, cancel }
    }

    fn threads(&self) -> usize {
        if self.config.threads == 0 { self.engine.threads().max(1) } else { self.config.threads }
    }

    /// Trains on `data` on this thread (the heavy products on the configured number of
    /// worker threads); `progress` is called after every optimizer step and can stop the run.
    pub fn train(&self, data: &TrainData, progress: &mut dyn FnMut(&Progress) -> Flow) -> Result<TrainOutput> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(self.threads())
            .thread_name(|i| format!("tailor-train-{i}"))
            .build()
            .map_err(|e| Error::invalid_config(format!("worker threads: {e}")))?;
        self.train_inner(data, progress, &pool)
    }

    /// What to keep for the backward pass of sequences `seqs` (each its own pass, held at
    /// once) under the configuration's memory budget.
    fn keep_for(&self, net: &Net<'_>, seqs: &[&Seq], index: usize) -> Result<Keep> {
        self.keep_for_passes(net, &seqs.iter().map(|s| (vec![s.tokens.len()], s.targets.len())).collect::<Vec<_>>(), index)
    }

    /// What to keep for passes `(packed lengths, scored positions)` held at once.
    fn keep_for_passes(&self, net: &Net<'_>, passes: &[(Vec<usize>, usize)], index: usize) -> Result<Keep> {
        let need = |keep| passes.iter().map(|(lens, m)| net.activation_bytes(lens, *m, keep)).sum::<usize>();
        let preferred = if self.config.activation_checkpointing { Keep::LayerInputs } else { Keep::All };
        let Some(mib) = self.config.max_activation_mib else { return Ok(preferred) };
        let budget = mib.saturating_mul(1 << 20);
        if need(preferred) <= budget {
            Ok(preferred)
        } else if need(Keep::LayerInputs) <= budget {
            Ok(Keep::LayerInputs)
        } else {
            Err(Error::InvalidExample {
                index,
                reason: format!("needs {} MiB of activations, over max_activation_mib = {mib}", need(Keep::LayerInputs) >> 20),
            })
        }
    }

    fn items(&self, data: &TrainData, net: &Net<'_>) -> Result<Vec<Item>> {
        if data.is_empty() {
            return Err(Error::NoExamples);
        }
        let max = self.config.max_seq_len.min(self.engine.model_config().context_length.max(2));
        let vocab = self.engine.model_config().vocab_size;
        let check = |index: usize, s: &Seq| -> Result<()> {
            if s.targets.is_empty() {
                return Err(Error::InvalidExample { index, reason: "no answer token left to train on (empty answer or prompt too long)".into() });
            }
            if let Some(t) = s.tokens.iter().find(|&&t| t as usize >= vocab) {
                return Err(Error::InvalidExample { index, reason: format!("token {t} outside the vocabulary of {vocab}") });
            }
            Ok(())
        };
        let mut items = Vec::with_capacity(data.len());
        for (i, e) in data.sft.iter().enumerate() {
            let s = sequence(&e.prompt_tokens, &e.answer_tokens, max);
            check(i, &s)?;
            self.keep_for(net, &[&s], i)?;
            items.push(Item::Sft(s));
        }
        for (i, e) in data.preferences.iter().enumerate() {
            let chosen = sequence(&e.prompt_tokens, &e.chosen_tokens, max);
            let rejected = sequence(&e.prompt_tokens, &e.rejected_tokens, max);
            check(i, &chosen)?;
            check(i, &rejected)?;
            let keep = self.keep_for(net, &[&chosen, &rejected], i)?;
            items.push(Item::Pref { chosen, rejected, keep });
        }
        Ok(items)
    }

    /// The passes of one step's examples `picked`, in order: SFT examples packed greedily (a
    /// pack is closed when the next example would take it past `pack_tokens`, or past
    /// `max_activation_mib` even with activation checkpointing), each DPO pair on its own.
    fn plan<'a>(&self, net: &Net<'_>, items: &'a [Item], picked: &[usize]) -> Result<Vec<Pass<'a>>> {
        let mut passes = Vec::new();
        let mut open: Vec<&Seq> = Vec::new();
        let (mut lens, mut m) = (Vec::new(), 0usize);
        let fits = |lens: &[usize], m: usize| match self.config.max_activation_mib {
            None => true,
            Some(mib) => net.activation_bytes(lens, m, Keep::LayerInputs) <= mib.saturating_mul(1 << 20),
        };
        let close = |open: &mut Vec<&'a Seq>, lens: &mut Vec<usize>, m: &mut usize, passes: &mut Vec<Pass<'a>>| -> Result<()> {
            if !open.is_empty() {
                // A pack fits the budget with checkpointing: checked as it grew (a lone
                // example by `items`).
                let keep = self.keep_for_passes(net, &[(std::mem::take(lens), *m)], 0)?;
                passes.push(Pass::Sft(std::mem::take(open), keep));
                *m = 0;
            }
            Ok(())
        };
        for &i in picked {
            match &items[i] {
                Item::Sft(s) => {
                    let n = s.tokens.len();
                    let mut more = lens.clone();
                    more.push(n);
                    let tokens: usize = lens.iter().sum();
                    if !open.is_empty() && (tokens + n > self.config.pack_tokens || !fits(&more, m + s.targets.len())) {
                        close(&mut open, &mut lens, &mut m, &mut passes)?;
                    }
                    open.push(s);
                    lens.push(n);
                    m += s.targets.len();
                    if lens.iter().sum::<usize>() >= self.config.pack_tokens {
                        // Full (with `pack_tokens = 0`: every example alone, in order).
                        close(&mut open, &mut lens, &mut m, &mut passes)?;
                    }
                }
                Item::Pref { .. } => passes.push(Pass::Pref(i)),
            }
        }
        close(&mut open, &mut lens, &mut m, &mut passes)?;
        Ok(passes)
    }

    /// Identifies what a checkpoint belongs to: base, data, initial adapter and every setting
    /// that changes the arithmetic (not limits, threads, activation checkpointing or paths;
    /// not the memory budget either unless examples are packed, where it can change how they
    /// are grouped).
    fn run_id(&self, data: &TrainData) -> String {
        let mut c = self.config.clone();
        c.max_seconds = None;
        c.threads = 0;
        c.checkpoint_dir = None;
        c.checkpoint_every = 0;
        c.resume = false;
        c.activation_checkpointing = false;
        if c.pack_tokens == 0 {
            c.max_activation_mib = None;
        }
        let mut h = Sha256::new();
        h.update(self.engine.base_fingerprint().as_str().as_bytes());
        h.update(serde_json::to_vec(&c).unwrap_or_default());
        h.update(serde_json::to_vec(data).unwrap_or_default());
        if let Some(a) = &self.initial {
            for ((l, t), w) in a.iter() {
                h.update(format!("{l}{t:?}").as_bytes());
                h.update(bytemuck::cast_slice::<f32, u8>(w.a()));
                h.update(bytemuck::cast_slice::<f32, u8>(w.b()));
            }
        }
        format!("{:x}", h.finalize())
    }

    fn train_inner(&self, data: &TrainData, progress: &mut dyn FnMut(&Progress) -> Flow, pool: &rayon::ThreadPool) -> Result<TrainOutput> {
        let c = &self.config;
        let net = Net::new(self.engine.model_config(), self.engine.weights(), pool);
        let items = self.items(data, &net)?;
        let per_step = c.batch_size * c.grad_accum_steps;
        let total_steps = c.max_steps.unwrap_or(c.epochs * items.len().div_ceil(per_step));
        let run_id = self.run_id(data);
        let shapes = self.engine.base_shapes();
        let layout = self.engine.qk_layout();

        let mut rng = Rng::new(c.seed);
        let mut params = match &self.initial {
            Some(a) => LoraParams::from_adapter(a, shapes, layout)?,
            None => LoraParams::init(shapes, layout, c.lora_rank, c.lora_alpha, &c.targets, &mut rng)?,
        };
        let ref_params = match (c.dpo_reference, &self.initial) {
            (DpoReference::InitialAdapter, Some(_)) => Some(params.clone()),
            _ => None,
        };
        let mut opt = AdamW::new(params.len(), c.adam_beta1, c.adam_beta2, c.adam_eps, c.weight_decay);
        let frozen = frozen_ranges(&params, c.freeze_a, c.frozen_rank)?;
        let mut order: Vec<u32> = (0..items.len() as u32).collect();
        rng.shuffle(&mut order);
        let mut meta = Meta {
            run_id: run_id.clone(),
            step: 0,
            epoch: 0,
            cursor: 0,
            order,
            rng: rng.0,
            adam_t: 0,
            len: params.len(),
            losses: Vec::new(),
            trained_tokens: 0,
        };
        let mut resumed_from = None;
        if let (Some(dir), true) = (&c.checkpoint_dir, c.resume) {
            if let Some(st) = checkpoint::load(dir)? {
                let path = checkpoint::path_in(dir);
                if st.meta.run_id != run_id || st.meta.len != params.len() {
                    return Err(Error::checkpoint(path, "written by a run with other data, settings or base"));
                }
                params.data = st.params;
                opt.m = st.m;
                opt.v = st.v;
                opt.t = st.meta.adam_t;
                resumed_from = Some(st.meta.step);
                meta = st.meta;
            }
        }

        let save = |meta: &Meta, params: &LoraParams, opt: &AdamW| -> Result<()> {
            match &c.checkpoint_dir {
                Some(dir) => checkpoint::save(
                    dir,
                    &State { meta: Meta { adam_t: opt.t, ..meta.clone() }, params: params.data.clone(), m: opt.m.clone(), v: opt.v.clone() },
                ),
                None => Ok(()),
            }
        };

        let start = Instant::now();
        let tokens_at_start = meta.trained_tokens;
        let mut grads = vec![0f32; params.len()];
        let mut ref_cache: Vec<Option<(f32, f32)>> = vec![None; items.len()];
        let mut stop = StopReason::Completed;

        while meta.step < total_steps {
            // The step's examples, without touching the run's position until the step is done.
            let (mut epoch, mut cursor, mut order, mut rng) = (meta.epoch, meta.cursor, meta.order.clone(), Rng(meta.rng));
            let mut picked = Vec::with_capacity(per_step);
            while picked.len() < per_step {
                if cursor == order.len() {
                    epoch += 1;
                    cursor = 0;
                    rng.shuffle(&mut order);
                }
                picked.push(order[cursor] as usize);
                cursor += 1;
            }
            let sft_tokens: usize = picked.iter().map(|&i| if let Item::Sft(s) = &items[i] { s.targets.len() } else { 0 }).sum();
            let pairs = picked.iter().filter(|&&i| matches!(items[i], Item::Pref { .. })).count();

            grads.fill(0.0);
            let mut loss = 0f64;
            let mut step_tokens = 0u64;
            let mut cancelled = false;
            for pass in self.plan(&net, &items, &picked)? {
                if self.cancel.is_cancelled() {
                    cancelled = true;
                    break;
                }
                match pass {
                    Pass::Sft(seqs, keep) => {
                        let coef = 1.0 / sft_tokens as f32;
                        let (logp, tape) = if let [s] = seqs[..] {
                            net.forward(&s.tokens, &s.targets, Some(&params), keep)?
                        } else {
                            let p = Packed::new(&seqs);
                            net.forward_packed(&p.tokens, &p.lens, p.prefix, &p.targets, Some(&params), keep)?
                        };
                        loss -= logp.iter().map(|&x| x as f64).sum::<f64>() * coef as f64;
                        net.backward(tape.expect("kept"), coef, &params, &mut grads);
                        step_tokens += seqs.iter().map(|s| s.tokens.len() as u64).sum::<u64>();
                    }
                    Pass::Pref(i) => {
                        let Item::Pref { ref chosen, ref rejected, keep } = items[i] else { unreachable!("a DPO pass holds a pair") };
                        let (ref_c, ref_r) = match ref_cache[i] {
                            Some(v) => v,
                            None => {
                                let rc: f32 = net.forward(&chosen.tokens, &chosen.targets, ref_params.as_ref(), Keep::Nothing)?.0.iter().sum();
                                let rr: f32 = net.forward(&rejected.tokens, &rejected.targets, ref_params.as_ref(), Keep::Nothing)?.0.iter().sum();
                                ref_cache[i] = Some((rc, rr));
                                (rc, rr)
                            }
                        };
                        let (lc, tc) = net.forward(&chosen.tokens, &chosen.targets, Some(&params), keep)?;
                        let (lr, tr) = net.forward(&rejected.tokens, &rejected.targets, Some(&params), keep)?;
                        let (lc, lr): (f32, f32) = (lc.iter().sum(), lr.iter().sum());
                        let z = c.dpo_beta * ((lc - ref_c) - (lr - ref_r));
                        let w = c.dpo_weight / pairs as f32;
                        // -log σ(z) = softplus(-z); d/dz = -σ(-z).
                        loss += (w * softplus(-z)) as f64;
                        let g = w * c.dpo_beta * sigmoid(-z);
                        // J = coef·(-log π): coef_c = g, coef_r = -g.
                        net.backward(tc.expect("kept"), g, &params, &mut grads);
                        net.backward(tr.expect("kept"), -g, &params, &mut grads);
                        step_tokens += (chosen.tokens.len() + rejected.tokens.len()) as u64;
                    }
                }
            }
            if cancelled {
                stop = StopReason::Cancelled;
                break;
            }
            let loss = loss as f32;
            if !loss.is_finite() {
                return Err(Error::Diverged { step: meta.step + 1, what: "loss" });
            }
            for r in &frozen {
                grads[r.clone()].iter_mut().for_each(|g| *g = 0.0);
            }
            let grad_norm = clip_grad_norm(&mut grads, c.max_grad_norm);
            if !grad_norm.is_finite() {
                return Err(Error::Diverged { step: meta.step + 1, what: "gradient" });
            }
            let lr = lr_at(meta.step, total_steps, c.warmup_steps, c.learning_rate, c.min_lr_ratio);
            opt.step_except(&mut params.data, &grads, lr, &frozen);

            meta.step += 1;
            meta.epoch = epoch;
            meta.cursor = cursor;
            meta.order = order;
            meta.rng = rng.0;
            meta.adam_t = opt.t;
            meta.losses.push(loss);
            meta.trained_tokens += step_tokens;

            let elapsed = start.elapsed();
            let done_here = meta.step - resumed_from.unwrap_or(0);
            let eta = elapsed.mul_f64((total_steps - meta.step) as f64 / done_here.max(1) as f64);
            let tps = (meta.trained_tokens - tokens_at_start) as f64 / elapsed.as_secs_f64().max(1e-9);
            let p = Progress {
                step: meta.step,
                total_steps,
                epoch,
                loss,
                learning_rate: lr,
                grad_norm,
                tokens_per_s: tps,
                elapsed,
                eta,
            };
            let flow = progress(&p);
            if c.checkpoint_every > 0 && meta.step.is_multiple_of(c.checkpoint_every) {
                save(&meta, &params, &opt)?;
            }
            if meta.step >= total_steps {
                break;
            }
            if flow == Flow::Stop {
                stop = StopReason::Callback;
                break;
            }
            if self.cancel.is_cancelled() {
                stop = StopReason::Cancelled;
                break;
            }
            if c.max_seconds.is_some_and(|s| elapsed.as_secs_f64() >= s) {
                stop = StopReason::TimeLimit;
                break;
            }
        }
        save(&meta, &params, &opt)?;
        let elapsed = start.elapsed();
        let trained_here = meta.trained_tokens - tokens_at_start;
        Ok(TrainOutput {
            adapter: params.to_adapter(Some(self.engine.base_fingerprint()))?,
            metrics: TrainMetrics {
                steps: meta.step,
                total_steps,
                resumed_from,
                losses: meta.losses,
                trained_tokens: meta.trained_tokens,
                tokens_per_s: trained_here as f64 / elapsed.as_secs_f64().max(1e-9),
                elapsed,
                stop,
            },
        })
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

fn softplus(x: f32) -> f32 {
    if x > 20.0 { x } else { x.exp().ln_1p() }
}

/// The parameter ranges that take no update, sorted and disjoint: with `freeze_a` every `A`
/// block; with `frozen_rank` the first rows of every `A` (contiguous) and the first columns of
/// every row of `B` (`[out, r]`, row-major).
fn frozen_ranges(params: &LoraParams, freeze_a: bool, frozen_rank: usize) -> Result<Vec<std::ops::Range<usize>>> {
    let mut frozen = Vec::new();
    for s in params.slots.iter().flatten().flatten() {
        if frozen_rank > 0 && frozen_rank >= s.r {
            return Err(Error::invalid_config(format!(
                "frozen_rank {frozen_rank} leaves nothing to train in a LoRA pair of rank {}", s.r
            )));
        }
        if freeze_a {
            frozen.push(s.a..s.a + s.r * s.d_in);
        } else if frozen_rank > 0 {
            frozen.push(s.a..s.a + frozen_rank * s.d_in);
        }
        if frozen_rank > 0 {
            frozen.extend((0..s.d_out).map(|row| s.b + row * s.r..s.b + row * s.r + frozen_rank));
        }
    }
    frozen.sort_by_key(|r| r.start);
    Ok(frozen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_scores_answer_tokens_only() {
        let s = sequence(&[5, 6, 7], &[8, 9], 100);
        assert_eq!(s.tokens, vec![5, 6, 7, 8, 9]);
        assert_eq!(s.targets, vec![(2, 8), (3, 9)]);
        let cut = sequence(&[5, 6, 7], &[8, 9], 4);
        assert_eq!(cut.targets, vec![(2, 8)]);
        // No prompt: the first answer token has no context to be predicted from.
        assert_eq!(sequence(&[], &[1, 2, 3], 10).targets, vec![(0, 2), (1, 3)]);
    }

    /// The shared prefix stops where the sequences differ and before the first scored
    /// position of any; the packed targets point at the same tokens.
    #[test]
    fn packing_keeps_a_shared_prefix_once() {
        let a = sequence(&[1, 2, 3, 4, 5], &[6, 7], 100);
        let b = sequence(&[1, 2, 3, 9], &[8], 100);
        let c = sequence(&[1, 2], &[3, 4, 5, 6], 100);
        assert_eq!(shared_prefix(&[&a, &b]), 3);
        // c is scored from position 1 (its answer starts at token 2): the prefix stops there.
        assert_eq!(shared_prefix(&[&a, &b, &c]), 1);
        assert_eq!(shared_prefix(&[&a]), 0);
        let p = Packed::new(&[&a, &b]);
        assert_eq!((p.prefix, p.lens.clone()), (3, vec![7, 2]));
        assert_eq!(p.tokens, vec![1, 2, 3, 4, 5, 6, 7, 9, 8]);
        // b's target (3, 8): the logits at its token 9 (packed position 7) predict 8.
        assert_eq!(p.targets, vec![(4, 6), (5, 7), (7, 8)]);
    }

    /// SFT examples are packed in order up to `pack_tokens` (a longer one alone), a DPO pair
    /// runs on its own as it comes, `pack_tokens = 0` runs every example alone, and a memory
    /// budget closes a pack early.
    #[test]
    fn plan_packs_sft_examples_in_order() {
        use crate::config::{PreferenceExample, SftExample};
        let mut m = tailor::testing::TinyModel::default();
        m.seed = 3;
        let dir = tailor::testing::TempDir::new("plan");
        let path = dir.path("tiny.gguf");
        m.write(&path).unwrap();
        let engine = Engine::load(&path, tailor::EngineConfig::default()).unwrap();
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let net = Net::new(engine.model_config(), engine.weights(), &pool);
        let sft = |n: usize, answer: usize| SftExample { prompt_tokens: vec![5; n - answer], answer_tokens: vec![6; answer] };
        let shape = |config: TrainConfig, data: &TrainData, picked: &[usize]| -> Vec<Vec<usize>> {
            let t = Trainer::new(&engine, config).unwrap();
            let items = t.items(data, &net).unwrap();
            let passes = t.plan(&net, &items, picked).unwrap();
            passes
                .iter()
                .map(|p| match p {
                    Pass::Sft(seqs, _) => seqs.iter().map(|s| s.tokens.len()).collect(),
                    Pass::Pref(i) => vec![1000 + i],
                })
                .collect()
        };
        let mut data = TrainData::sft([8, 8, 8, 25, 3, 4].into_iter().map(|n| sft(n, 2)).collect());
        data.preferences.push(PreferenceExample { prompt_tokens: vec![5], chosen_tokens: vec![6], rejected_tokens: vec![7] });
        let picked = [0, 1, 2, 3, 6, 4, 5]; // 6 is the pair
        let mut c = TrainConfig { pack_tokens: 20, ..TrainConfig::default() };
        assert_eq!(shape(c.clone(), &data, &picked), vec![vec![8, 8], vec![8], vec![25], vec![1006], vec![3, 4]]);
        c.pack_tokens = 0;
        assert_eq!(shape(c.clone(), &data, &picked), vec![vec![8], vec![8], vec![8], vec![25], vec![1006], vec![3], vec![4]]);

        // Three examples of 250 tokens: ~0.7 MiB of activations each with checkpointing.
        let big = TrainData::sft((0..3).map(|_| sft(250, 150)).collect());
        c.pack_tokens = 1024;
        c.max_activation_mib = Some(1);
        assert_eq!(shape(c.clone(), &big, &[0, 1, 2]), vec![vec![250], vec![250], vec![250]]);
        c.max_activation_mib = Some(2);
        assert_eq!(shape(c.clone(), &big, &[0, 1, 2]), vec![vec![250, 250], vec![250]]);
        c.max_activation_mib = None;
        assert_eq!(shape(c, &big, &[0, 1, 2]), vec![vec![250, 250, 250]]);
    }

    #[test]
    fn dpo_pieces() {
        assert!((softplus(0.0) - std::f32::consts::LN_2).abs() < 1e-6);
        assert_eq!(softplus(50.0), 50.0);
        assert!((sigmoid(0.0) - 0.5).abs() < 1e-7);
    }
}
