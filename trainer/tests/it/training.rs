//! The loop: SFT overfits, DPO raises the margin, a stopped run resumes bit-identically,
//! cancellation and limits stop a run cleanly.

use candle_core::quantized::GgmlDType;
use rand::{Rng, SeedableRng};
use tailor::adapters::{LoraAdapter, LoraConfig, LoraWeights, Target};
use tailor_trainer::{
    mean_nll, score_answers, ErrorKind, Flow, PreferenceExample, SftExample, StopReason, TrainConfig, TrainData, Trainer,
};

use crate::common::{fresh_seed, random_tokens, tiny, TempDir};

fn sft_data(engine: &tailor::Engine, seed: u64, n: usize) -> Vec<SftExample> {
    (0..n)
        .map(|i| SftExample {
            prompt_tokens: random_tokens(engine, 6, seed * 100 + i as u64),
            answer_tokens: random_tokens(engine, 5, seed * 100 + 50 + i as u64),
        })
        .collect()
}

fn config(steps: usize, lr: f32, seed: u64) -> TrainConfig {
    let mut c = TrainConfig::default();
    c.lora_rank = 4;
    c.lora_alpha = 8.0;
    c.learning_rate = lr;
    c.max_steps = Some(steps);
    c.warmup_steps = 2;
    c.seed = seed;
    c.threads = 2;
    c
}

/// A short unfrozen run on `data`: an adapter whose `B` is not zero and whose `A` is not the
/// init, for runs that start from another run's adapter.
fn warm_start(engine: &tailor::Engine, data: &[SftExample], seed: u64) -> LoraAdapter {
    Trainer::new(engine, config(3, 1e-2, seed)).unwrap().train(&TrainData::sft(data.to_vec()), &mut |_| Flow::Continue).unwrap().adapter
}

fn flat(a: &LoraAdapter) -> Vec<f32> {
    a.iter().flat_map(|(_, w)| w.a().iter().chain(w.b()).copied().collect::<Vec<_>>()).collect()
}

/// SFT on four random sequences for 40 steps: their answer NLL falls below 40% of the base's.
#[test]
fn sft_overfits_a_tiny_set() {
    let seed = fresh_seed();
    let (_d, engine) = tiny(GgmlDType::Q8_0, seed);
    let data = sft_data(&engine, seed, 4);
    let before = mean_nll(&score_answers(&engine, None, &data, 2).unwrap());
    let mut c = config(40, 1e-2, seed);
    c.batch_size = 2;
    let mut seen = Vec::new();
    let out = Trainer::new(&engine, c).unwrap().train(&TrainData::sft(data.clone()), &mut |p| {
        seen.push(p.step);
        Flow::Continue
    }).unwrap();
    let after = mean_nll(&score_answers(&engine, Some(&out.adapter), &data, 2).unwrap());
    assert_eq!(seen, (1..=40).collect::<Vec<_>>());
    assert_eq!(out.metrics.stop, StopReason::Completed);
    assert!(after < 0.4 * before, "seed {seed}: NLL {before} -> {after}; losses {:?}", out.metrics.losses);
    // The adapter carries the base's fingerprint and PEFT's layout: it saves and reloads.
    let dir = TempDir::new("peft");
    tailor::adapters::peft::save(&out.adapter, &dir.0).unwrap();
    let back = tailor::adapters::peft::load(&dir.0, &Default::default()).unwrap();
    assert_eq!(flat(&back), flat(&out.adapter));
}

/// `freeze_a` (FFA-LoRA's clients): every `A` comes out bit-identical to the initial adapter's
/// (a seeded init from another run), the `B`s move, and the loss still falls; two clients that
/// start from one shared adapter keep one shared `A`.
#[test]
fn freeze_a_trains_b_only() {
    let seed = fresh_seed();
    let (_d, engine) = tiny(GgmlDType::Q8_0, seed);
    let data = sft_data(&engine, seed, 4);
    let start = warm_start(&engine, &data, seed);
    let before = mean_nll(&score_answers(&engine, Some(&start), &data, 2).unwrap());
    let mut c = config(30, 1e-2, seed + 1);
    c.freeze_a = true;
    let out = Trainer::new(&engine, c).unwrap().with_initial_adapter(start.clone()).unwrap()
        .train(&TrainData::sft(data.clone()), &mut |_| Flow::Continue).unwrap();
    let after = mean_nll(&score_answers(&engine, Some(&out.adapter), &data, 2).unwrap());
    let mut moved = 0.0f32;
    for ((key, w), (key0, w0)) in out.adapter.iter().zip(start.iter()) {
        assert_eq!(key, key0);
        assert_eq!(w.a(), w0.a(), "A of {key:?} moved");
        moved += w.b().iter().zip(w0.b()).map(|(x, y)| (x - y).abs()).sum::<f32>();
    }
    assert!(moved > 0.0, "no B moved");
    assert!(after < 0.7 * before, "seed {seed}: NLL {before} -> {after}");
}

/// `frozen_rank` (FLoRA's stacking): a rank-4 adapter from another run stacked with a fresh
/// rank-2 LoRA (`B = 0`) into one rank-6 adapter scores exactly as the rank-4 one; trained with
/// the first 4 components frozen, those come out bit-identical, the fresh ones move, and the
/// loss falls below the frozen adapter's. Freezing every component is refused.
#[test]
fn frozen_rank_trains_only_the_stacked_update() {
    let seed = fresh_seed();
    let (_d, engine) = tiny(GgmlDType::Q8_0, seed);
    let data = sft_data(&engine, seed, 4);
    let start = warm_start(&engine, &data, seed);
    let nll_start = mean_nll(&score_answers(&engine, Some(&start), &data, 2).unwrap());
    // Same scale (alpha / r = 2) for the stacked adapter, so B keeps its values.
    let targets: Vec<Target> = Target::ALL.iter().copied().filter(|&t| start.iter().any(|((_, u), _)| u == t)).collect();
    let mut stacked = LoraAdapter::new(LoraConfig::new(6, 12.0, &targets)).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for ((l, t), w) in start.iter() {
        let (r, d_in, d_out) = (w.r(), w.in_features(), w.out_features());
        let bound = 1.0 / (d_in as f32).sqrt();
        let mut a = w.a().to_vec();
        a.extend((0..2 * d_in).map(|_| rng.random_range(-bound..bound)));
        let b: Vec<f32> = (0..d_out).flat_map(|o| w.b()[o * r..(o + 1) * r].iter().copied().chain([0.0, 0.0])).collect();
        stacked.insert(l, t, LoraWeights::new(6, d_in, d_out, a, b).unwrap()).unwrap();
    }
    let nll_stacked = mean_nll(&score_answers(&engine, Some(&stacked), &data, 2).unwrap());
    assert!((nll_stacked - nll_start).abs() <= 1e-4 * nll_start.abs().max(1.0), "stacking changed the NLL: {nll_start} -> {nll_stacked}");

    let mut c = config(30, 1e-2, seed + 1);
    c.lora_rank = 6;
    c.frozen_rank = 4;
    let out = Trainer::new(&engine, c.clone()).unwrap().with_initial_adapter(stacked.clone()).unwrap()
        .train(&TrainData::sft(data.clone()), &mut |_| Flow::Continue).unwrap();
    let after = mean_nll(&score_answers(&engine, Some(&out.adapter), &data, 2).unwrap());
    let mut moved = 0.0f32;
    for ((key, w), (_, w0)) in out.adapter.iter().zip(stacked.iter()) {
        let d_in = w.in_features();
        assert_eq!(w.a()[..4 * d_in], w0.a()[..4 * d_in], "frozen rows of A of {key:?} moved");
        for (row, row0) in w.b().chunks_exact(6).zip(w0.b().chunks_exact(6)) {
            assert_eq!(row[..4], row0[..4], "frozen columns of B of {key:?} moved");
            moved += row[4..].iter().map(|x| x.abs()).sum::<f32>();
        }
        moved += w.a()[4 * d_in..].iter().zip(&w0.a()[4 * d_in..]).map(|(x, y)| (x - y).abs()).sum::<f32>();
    }
    assert!(moved > 0.0, "the fresh components did not move");
    assert!(after < 0.7 * nll_start, "seed {seed}: NLL {nll_start} -> {after}");

    c.frozen_rank = 6;
    let err = Trainer::new(&engine, c).and_then(|t| t.with_initial_adapter(stacked)).and_then(|t| t.train(&TrainData::sft(data), &mut |_| Flow::Continue)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
}

/// DPO on three pairs: the chosen-minus-rejected log-probability margin rises (by more than
/// 2 nats on average), and the DPO loss falls below its starting value ln 2.
#[test]
fn dpo_raises_the_preference_margin() {
    let seed = fresh_seed();
    let (_d, engine) = tiny(GgmlDType::Q8_0, seed);
    let pairs: Vec<PreferenceExample> = (0..3u64)
        .map(|i| PreferenceExample {
            prompt_tokens: random_tokens(&engine, 5, seed * 10 + i),
            chosen_tokens: random_tokens(&engine, 4, seed * 10 + 100 + i),
            rejected_tokens: random_tokens(&engine, 4, seed * 10 + 200 + i),
        })
        .collect();
    let margin = |a: Option<&LoraAdapter>| -> f64 {
        let as_sft = |pick: fn(&PreferenceExample) -> &Vec<u32>| -> Vec<SftExample> {
            pairs.iter().map(|p| SftExample { prompt_tokens: p.prompt_tokens.clone(), answer_tokens: pick(p).clone() }).collect()
        };
        let c = score_answers(&engine, a, &as_sft(|p| &p.chosen_tokens), 2).unwrap();
        let r = score_answers(&engine, a, &as_sft(|p| &p.rejected_tokens), 2).unwrap();
        c.iter().zip(&r).map(|(c, r)| c.logprob - r.logprob).sum::<f64>() / pairs.len() as f64
    };
    let before = margin(None);
    let mut c = config(30, 1e-2, seed);
    c.dpo_beta = 0.5;
    c.batch_size = 3;
    let out = Trainer::new(&engine, c).unwrap().train(&TrainData::preferences(pairs.clone()), &mut |_| Flow::Continue).unwrap();
    let after = margin(Some(&out.adapter));
    let l = &out.metrics.losses;
    assert!((l[0] - std::f32::consts::LN_2).abs() < 1e-3, "seed {seed}: first DPO loss {} (B = 0: ln 2)", l[0]);
    assert!(after > before + 2.0, "seed {seed}: margin {before} -> {after}; losses {l:?}");
    assert!(*l.last().unwrap() < 0.5 * l[0], "seed {seed}: losses {l:?}");

    // Continuing from that adapter with it as the reference: the first loss is ln 2 again
    // (policy = reference); against the base it is lower (the margin is already there).
    let mut c = config(2, 1e-2, seed);
    c.dpo_beta = 0.5;
    c.batch_size = 3;
    let data = TrainData::preferences(pairs.clone());
    let first_loss = |reference| {
        let mut c = c.clone();
        c.dpo_reference = reference;
        let t = Trainer::new(&engine, c).unwrap().with_initial_adapter(out.adapter.clone()).unwrap();
        t.train(&data, &mut |_| Flow::Continue).unwrap().metrics.losses[0]
    };
    let vs_initial = first_loss(tailor_trainer::DpoReference::InitialAdapter);
    let vs_base = first_loss(tailor_trainer::DpoReference::Base);
    assert!((vs_initial - std::f32::consts::LN_2).abs() < 1e-3, "seed {seed}: {vs_initial}");
    assert!(vs_base < 0.5 * vs_initial, "seed {seed}: {vs_base} vs {vs_initial}");
}

fn mixed(engine: &tailor::Engine, seed: u64) -> TrainData {
    let mut d = TrainData::sft(sft_data(engine, seed, 3));
    d.preferences = (0..2u64)
        .map(|i| PreferenceExample {
            prompt_tokens: random_tokens(engine, 4, seed + 300 + i),
            chosen_tokens: random_tokens(engine, 3, seed + 400 + i),
            rejected_tokens: random_tokens(engine, 5, seed + 500 + i),
        })
        .collect();
    d
}

/// A run stopped by its callback after 5 of 11 steps and resumed from its checkpoint (by a new
/// trainer, as after a crash) ends with the same adapter and losses, bit for bit, as a run that
/// was never stopped. Mixed SFT + DPO data, accumulation, several epochs; the resumed part
/// runs with activation checkpointing and on one thread instead of two (the arithmetic does
/// not depend on either).
#[test]
fn stopped_run_resumes_bit_identically() {
    let seed = fresh_seed();
    let (_d, engine) = tiny(GgmlDType::Q8_0, seed);
    let data = mixed(&engine, seed);
    let mut c = config(11, 5e-3, seed);
    c.batch_size = 1;
    c.grad_accum_steps = 2;
    c.weight_decay = 0.01;
    let full = Trainer::new(&engine, c.clone()).unwrap().train(&data, &mut |_| Flow::Continue).unwrap();

    let dir = TempDir::new("ckpt");
    let mut c2 = c.clone();
    c2.checkpoint_dir = Some(dir.0.clone());
    let first = Trainer::new(&engine, c2.clone()).unwrap().train(&data, &mut |p| if p.step == 5 { Flow::Stop } else { Flow::Continue }).unwrap();
    assert_eq!(first.metrics.stop, StopReason::Callback);
    assert_eq!(first.metrics.steps, 5);
    assert!(dir.path(tailor_trainer::CHECKPOINT_FILE_NAME).exists());

    c2.activation_checkpointing = true;
    c2.threads = 1;
    let second = Trainer::new(&engine, c2.clone()).unwrap().train(&data, &mut |_| Flow::Continue).unwrap();
    assert_eq!(second.metrics.resumed_from, Some(5));
    assert_eq!(second.metrics.stop, StopReason::Completed);
    assert_eq!(second.metrics.losses, full.metrics.losses, "seed {seed}");
    assert_eq!(flat(&second.adapter), flat(&full.adapter), "seed {seed}: resumed adapter differs");

    // A checkpoint of another run is refused.
    let mut other = data.clone();
    other.sft.pop();
    let err = Trainer::new(&engine, c2).unwrap().train(&other, &mut |_| Flow::Continue).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Checkpoint, "{err}");
}

/// SFT examples of different lengths packed into one pass per step train as when each runs
/// alone: every step's loss and gradient norm within 1e-5 relative (sums in another order,
/// f32; measured ~1e-7 and ~4e-7), the final adapters within 1e-4 relative L2 after 8 AdamW
/// steps (measured ~2e-6). A packed run on one thread is bit-identical to one on two.
#[test]
fn packed_steps_train_as_separate_sequences() {
    let seed = fresh_seed();
    let (_d, engine) = tiny(GgmlDType::Q8_0, seed);
    let data = TrainData::sft(
        (0..10u64)
            .map(|i| SftExample {
                prompt_tokens: random_tokens(&engine, 3 + (i as usize * 7) % 40, seed * 100 + i),
                answer_tokens: random_tokens(&engine, 2 + (i as usize * 5) % 11, seed * 100 + 50 + i),
            })
            .collect(),
    );
    let run = |pack_tokens: usize, threads: usize| {
        let mut c = config(8, 5e-3, seed);
        c.batch_size = 3;
        c.grad_accum_steps = 2;
        c.pack_tokens = pack_tokens;
        c.threads = threads;
        let mut norms = Vec::new();
        let out = Trainer::new(&engine, c).unwrap().train(&data, &mut |p| {
            norms.push(p.grad_norm);
            Flow::Continue
        }).unwrap();
        (out, norms)
    };
    let (alone, alone_norms) = run(0, 2);
    let (packed, packed_norms) = run(512, 2);
    assert_eq!(packed.metrics.trained_tokens, alone.metrics.trained_tokens);
    for (s, ((a, b), (na, nb))) in alone.metrics.losses.iter().zip(&packed.metrics.losses).zip(alone_norms.iter().zip(&packed_norms)).enumerate() {
        assert!((a - b).abs() <= 1e-5 * a.abs(), "seed {seed}: step {s} loss {a} alone vs {b} packed");
        assert!((na - nb).abs() <= 1e-5 * na.abs(), "seed {seed}: step {s} gradient norm {na} alone vs {nb} packed");
    }
    let (fa, fp) = (flat(&alone.adapter), flat(&packed.adapter));
    let num: f64 = fa.iter().zip(&fp).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
    let den: f64 = fa.iter().map(|a| (*a as f64).powi(2)).sum();
    assert!((num / den).sqrt() < 1e-4, "seed {seed}: adapters differ by {} relative L2", (num / den).sqrt());

    let (one_thread, _) = run(512, 1);
    assert_eq!(one_thread.metrics.losses, packed.metrics.losses, "seed {seed}");
    assert_eq!(flat(&one_thread.adapter), fp, "seed {seed}: packed run depends on the thread count");
}

/// A background run cancelled from another thread stops at a step boundary with
/// `Cancelled`; `max_seconds = 0` stops after the first step with `TimeLimit`.
#[test]
fn cancel_and_time_limit_stop_cleanly() {
    let seed = fresh_seed();
    let (_d, engine) = tiny(GgmlDType::Q8_0, seed);
    let data = TrainData::sft(sft_data(&engine, seed, 2));
    let trainer = Trainer::new(&engine, config(1000, 1e-3, seed)).unwrap();
    let cancel = trainer.cancel_handle();
    let (tx, rx) = std::sync::mpsc::channel();
    let job = trainer.spawn(data.clone(), move |p| {
        let _ = tx.send(p.step);
        Flow::Continue
    });
    assert_eq!(rx.recv().unwrap(), 1);
    cancel.cancel();
    let out = job.join().unwrap();
    assert_eq!(out.metrics.stop, StopReason::Cancelled);
    assert!(out.metrics.steps < 1000);

    let mut c = config(1000, 1e-3, seed);
    c.max_seconds = Some(0.0);
    let out = Trainer::new(&engine, c).unwrap().train(&data, &mut |_| Flow::Continue).unwrap();
    assert_eq!((out.metrics.stop, out.metrics.steps), (StopReason::TimeLimit, 1));
}

/// Bad input is refused with `InvalidInput` before any work.
#[test]
fn bad_input_is_refused() {
    let (_d, engine) = tiny(GgmlDType::Q8_0, 1);
    let run = |data: TrainData| Trainer::new(&engine, config(3, 1e-3, 0)).unwrap().train(&data, &mut |_| Flow::Continue);
    assert_eq!(run(TrainData::default()).unwrap_err().kind(), ErrorKind::InvalidInput);
    let empty_answer = TrainData::sft(vec![SftExample { prompt_tokens: vec![1, 2], answer_tokens: vec![] }]);
    assert_eq!(run(empty_answer).unwrap_err().kind(), ErrorKind::InvalidInput);
    let bad_token = TrainData::sft(vec![SftExample { prompt_tokens: vec![1], answer_tokens: vec![1_000_000] }]);
    assert_eq!(run(bad_token).unwrap_err().kind(), ErrorKind::InvalidInput);
    let mut tight = config(3, 1e-3, 0);
    tight.max_activation_mib = Some(0);
    let ok = TrainData::sft(vec![SftExample { prompt_tokens: vec![1, 2], answer_tokens: vec![3, 4] }]);
    let err = Trainer::new(&engine, tight).unwrap().train(&ok, &mut |_| Flow::Continue).unwrap_err();
    assert!(matches!(err, tailor_trainer::Error::InvalidExample { .. }), "{err}");
    let mut c = config(3, 1e-3, 0);
    c.lora_rank = 0;
    assert_eq!(Trainer::new(&engine, c).unwrap_err().kind(), ErrorKind::InvalidInput);
}
