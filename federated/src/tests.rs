//! Aggregation against an independent dense f64 reference, on fresh random factors.

#![allow(clippy::field_reassign_with_default)]

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tailor_adapters::linalg::{svd, Mat};
use tailor_adapters::{BaseFingerprint, LoraAdapter, Target};

use crate::update::tests::{dense, random_adapter};
use crate::*;

const TARGETS: [Target; 2] = [Target::Q, Target::K];

fn dims(t: Target) -> (usize, usize) {
    if t == Target::K { (7, 4) } else { (7, 11) } // (in, out)
}

fn rng() -> ChaCha20Rng {
    let seed: u64 = rand::random();
    eprintln!("seed {seed}");
    ChaCha20Rng::seed_from_u64(seed)
}

fn clients(rng: &mut ChaCha20Rng, ranks: &[usize]) -> Vec<Update> {
    ranks
        .iter()
        .enumerate()
        .map(|(i, &r)| {
            let a = random_adapter(rng, r, 2.0 * r as f64 + i as f64, 2, &TARGETS, dims);
            Update::new(format!("c{i}"), a, rng.random_range(1..100))
        })
        .collect()
}

/// The dense `Σ wᵢ·sᵢ·Bᵢ·Aᵢ` of one pair (weights = samples normalised).
fn reference(updates: &[Update], l: usize, t: Target) -> Vec<f64> {
    let total: f64 = updates.iter().map(|u| u.samples as f64).sum();
    let mut out = vec![0f64; dims(t).0 * dims(t).1];
    for u in updates {
        for (o, d) in out.iter_mut().zip(dense(&u.adapter, l, t)) {
            *o += u.samples as f64 / total * d;
        }
    }
    out
}

fn diff_norm(x: &[f64], y: &[f64]) -> f64 {
    x.iter().zip(y).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt()
}

fn norm(x: &[f64]) -> f64 {
    x.iter().map(|a| a * a).sum::<f64>().sqrt()
}

fn no_outlier_check(method: Method) -> AggregateOptions {
    let mut o = AggregateOptions::new(method);
    o.max_norm_ratio = None;
    o
}

#[test]
fn exact_is_the_weighted_sum_at_full_rank() {
    let mut rng = rng();
    // Σ rᵢ = 6 ≤ 7 (factored path on Q, dense path on K, 6 > 4) and 12 > 7 (dense on both).
    for ranks in [&[1usize, 2, 3][..], &[3, 3, 3, 3]] {
        let ups = clients(&mut rng, ranks);
        let agg = aggregate(&ups, &no_outlier_check(Method::Exact)).unwrap();
        assert_eq!(agg.accepted.len(), ranks.len());
        assert_eq!(agg.report.rank, ranks.iter().sum::<usize>().min(7));
        for l in 0..2 {
            for t in TARGETS {
                let want = reference(&ups, l, t);
                let got = dense(&agg.adapter, l, t);
                // f32 factors: a few ulps of f32 relative to the norm.
                assert!(diff_norm(&got, &want) <= 1e-6 * norm(&want), "{ranks:?} {l} {t}");
            }
        }
        let e = agg.report.relative_error_vs_exact.unwrap();
        assert!(e < 1e-7, "{e}");
    }
}

#[test]
fn exact_truncation_is_eckart_young() {
    let mut rng = rng();
    let ups = clients(&mut rng, &[2, 3, 2]);
    for rank in [1, 2, 4] {
        let agg = aggregate(&ups, &no_outlier_check(Method::Exact).with_rank(rank)).unwrap();
        for (li, l) in [0, 1].into_iter().enumerate() {
            for (ti, t) in TARGETS.into_iter().enumerate() {
                let want = reference(&ups, l, t);
                let (d_in, d_out) = dims(t);
                let s = svd(&Mat::from_vec(d_out, d_in, want.clone())).s;
                let tail = s.iter().skip(rank).map(|x| x * x).sum::<f64>().sqrt();
                let err = diff_norm(&dense(&agg.adapter, l, t), &want);
                let tol = 1e-6 * norm(&want);
                assert!((err - tail).abs() <= tol, "rank {rank} {t}: error {err}, dense SVD tail {tail}");
                let row = &agg.report.layers[2 * li + ti];
                assert!((row.truncation_residual.unwrap() - tail).abs() <= tol);
            }
        }
    }
}

#[test]
fn fedit_is_biased_unless_the_as_agree_and_ffa_is_exact() {
    let mut rng = rng();
    let ups = clients(&mut rng, &[2, 2, 2]);
    let fedit = aggregate(&ups, &no_outlier_check(Method::FedIt)).unwrap();
    assert_eq!(fedit.report.rank, 2);
    let rel = fedit.report.relative_error_vs_exact.unwrap();
    assert!(rel > 0.1, "random A and B: FedIT is far from the exact mean ({rel})");
    // Its reported error is the dense one.
    let want = reference(&ups, 0, Target::Q);
    let err = diff_norm(&dense(&fedit.adapter, 0, Target::Q), &want);
    assert!((fedit.report.layers[0].error.unwrap() - err).abs() < 1e-6 * norm(&want));

    // Shared A (one alpha): FedIT = FFA = exact.
    let mut shared = ups.clone();
    for u in &mut shared[1..] {
        let mut a = u.adapter.clone();
        for ((l, t), _) in ups[0].adapter.iter() {
            let a0 = ups[0].adapter.get(l, t).unwrap().a().to_vec();
            a.get_mut(l, t).unwrap().a_mut().copy_from_slice(&a0);
        }
        u.adapter = a;
    }
    for method in [Method::FedIt, Method::Ffa] {
        let agg = aggregate(&shared, &no_outlier_check(method)).unwrap();
        assert_eq!(agg.accepted.len(), 3, "{method}");
        assert!(agg.report.relative_error_vs_exact.unwrap() < 1e-6, "{method}");
        for l in 0..2 {
            for t in TARGETS {
                let want = reference(&shared, l, t);
                assert!(diff_norm(&dense(&agg.adapter, l, t), &want) <= 1e-6 * norm(&want), "{method}");
            }
        }
    }
    // FFA with an odd A: that client is refused, named, the round goes on.
    let mut odd = shared.clone();
    odd[2].adapter.get_mut(1, Target::K).unwrap().a_mut()[0] += 1e-3;
    let agg = aggregate(&odd, &no_outlier_check(Method::Ffa)).unwrap();
    assert_eq!(agg.accepted, ["c0", "c1"]);
    assert_eq!(agg.refused[0].client, "c2");
    assert!(matches!(agg.refused[0].reason, RefusalReason::SharedA { .. }), "{}", agg.refused[0]);
    assert!(agg.refused[0].to_string().contains("model.layers.1.self_attn.k_proj"), "{}", agg.refused[0]);
}

/// Many equal clients of one wide pair, so the noise is measured over many entries.
fn wide_clients(rng: &mut ChaCha20Rng, n: usize) -> Vec<Update> {
    (0..n)
        .map(|i| Update::new(format!("w{i}"), random_adapter(rng, 2, 2.0, 6, &[Target::Q], |_| (48, 40)), 5))
        .collect()
}

#[test]
fn central_noise_has_the_stated_std_and_follows_the_seed() {
    let mut rng = rng();
    let ups = wide_clients(&mut rng, 4);
    let (sigma, clip) = (0.8, 0.5);
    let opts = no_outlier_check(Method::Exact).with_rank(40).with_clip(clip).with_noise(sigma, DpMode::Central, 7);
    let agg = aggregate(&ups, &opts).unwrap();
    let std = sigma * clip / 4.0; // equal weights: σ·C/n
    assert!((agg.report.noise_std.unwrap() - std).abs() < 1e-15);
    for c in &agg.report.clients {
        assert!(c.clipped_norm <= clip * (1.0 + 1e-12) && c.norm > clip, "{c:?}");
    }
    // The noiseless clipped mean, by the same code without noise.
    let clean = aggregate(&ups, &no_outlier_check(Method::Exact).with_rank(40).with_clip(clip)).unwrap();
    let mut diffs = Vec::new();
    for l in 0..6 {
        let (x, y) = (dense(&agg.adapter, l, Target::Q), dense(&clean.adapter, l, Target::Q));
        diffs.extend(x.iter().zip(&y).map(|(a, b)| a - b));
    }
    let n = diffs.len() as f64; // 11 520 entries: the std is within ~1.3% (1σ)
    let mean = diffs.iter().sum::<f64>() / n;
    let measured = (diffs.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / n).sqrt();
    assert!((measured / std - 1.0).abs() < 0.05, "measured {measured}, stated {std}");
    assert!(mean.abs() < 5.0 * std / n.sqrt());
    // Reproducible by seed; another seed, other noise.
    let again = aggregate(&ups, &opts).unwrap();
    assert_eq!(again.adapter, agg.adapter);
    let mut other = opts.clone();
    other.seed = 8;
    assert_ne!(aggregate(&ups, &other).unwrap().adapter, agg.adapter);
}

#[test]
fn ffa_noise_goes_on_b_and_local_noise_at_the_client() {
    let mut rng = rng();
    let mut ups = wide_clients(&mut rng, 3);
    let a0 = ups[0].adapter.clone();
    for u in &mut ups[1..] {
        for l in 0..6 {
            let a = a0.get(l, Target::Q).unwrap().a().to_vec();
            u.adapter.get_mut(l, Target::Q).unwrap().a_mut().copy_from_slice(&a);
        }
    }
    let (sigma, clip) = (1.5, 2.0);
    let opts = no_outlier_check(Method::Ffa).with_clip(clip).with_noise(sigma, DpMode::Central, 3);
    let noisy = aggregate(&ups, &opts).unwrap();
    let clean = aggregate(&ups, &no_outlier_check(Method::Ffa).with_clip(clip)).unwrap();
    let s = noisy.adapter.scale() as f64;
    let mut diffs = Vec::new();
    for l in 0..6 {
        let (x, y) = (noisy.adapter.get(l, Target::Q).unwrap(), clean.adapter.get(l, Target::Q).unwrap());
        assert_eq!(x.a(), y.a(), "A is shared, untouched");
        diffs.extend(x.b().iter().zip(y.b()).map(|(a, b)| s * (*a as f64 - *b as f64)));
    }
    let std = sigma * clip / 3.0;
    let measured = (diffs.iter().map(|d| d * d).sum::<f64>() / diffs.len() as f64).sqrt();
    assert!((measured / std - 1.0).abs() < 0.15, "{measured} vs {std} over {} entries", diffs.len());

    // Local: privatize_local at full rank adds N(0, (σC)²) to the clipped dense delta.
    let u = &ups[0].adapter;
    let full = {
        let mut a = LoraAdapter::new(tailor_adapters::LoraConfig::new(40, 40.0, &[Target::Q])).unwrap();
        for l in 0..6 {
            let w = u.get(l, Target::Q).unwrap();
            let mut av = vec![0f32; 40 * 48];
            let mut bv = vec![0f32; 40 * 40];
            av[..2 * 48].copy_from_slice(w.a());
            for o in 0..40 {
                bv[o * 40] = w.b()[o * 2] * u.scale();
                bv[o * 40 + 1] = w.b()[o * 2 + 1] * u.scale();
            }
            a.insert(l, Target::Q, tailor_adapters::LoraWeights::new(40, 48, 40, av, bv).unwrap()).unwrap();
        }
        a
    };
    let big_clip = 10.0 * update_norm(&full);
    let private = privatize_local(&full, big_clip, 0.01, 11);
    assert_eq!(private.config().r, 40);
    let mut diffs = Vec::new();
    for l in 0..6 {
        let (x, y) = (dense(&private, l, Target::Q), dense(&full, l, Target::Q));
        diffs.extend(x.iter().zip(&y).map(|(a, b)| a - b));
    }
    let std = 0.01 * big_clip;
    let measured = (diffs.iter().map(|d| d * d).sum::<f64>() / diffs.len() as f64).sqrt();
    assert!((measured / std - 1.0).abs() < 0.05, "{measured} vs {std}");
    assert_eq!(privatize_local(&full, big_clip, 0.01, 11), private, "seeded");
}

#[test]
fn bad_updates_are_refused_by_name_and_the_round_goes_on() {
    let mut rng = rng();
    let mut ups = clients(&mut rng, &[2; 11]);
    for u in &mut ups {
        u.adapter.set_base_fingerprint(BaseFingerprint::new("base-1"));
    }
    ups[1].adapter.get_mut(0, Target::Q).unwrap().b_mut()[3] = f32::NAN;
    ups[2].adapter.set_base_fingerprint(BaseFingerprint::new("base-2"));
    ups[3].adapter = random_adapter(&mut rng, 2, 4.0, 2, &TARGETS, |t| if t == Target::K { (7, 5) } else { dims(t) });
    ups[4].adapter = random_adapter(&mut rng, 2, 4.0, 3, &TARGETS, dims); // a layer 2 nobody has
    ups[5].adapter = random_adapter(&mut rng, 2, 4.0, 2, &[Target::Q], dims); // no k_proj
    let big = ups[6].adapter.clone();
    for ((l, t), _) in big.iter() {
        ups[6].adapter.get_mut(l, t).unwrap().b_mut().iter_mut().for_each(|x| *x *= 1000.0);
    }
    ups[7].samples = 0;
    ups[8].client = "c0".into();
    let agg = aggregate(&ups, &AggregateOptions::default()).unwrap();
    assert_eq!(agg.accepted, ["c0", "c9", "c10"]);
    let reasons: Vec<(&str, &RefusalReason)> = agg.refused.iter().map(|r| (r.client.as_str(), &r.reason)).collect();
    assert!(matches!(reasons[0], ("c1", RefusalReason::NonFinite { layer }) if layer == "model.layers.0.self_attn.q_proj"));
    assert!(matches!(reasons[1], ("c2", RefusalReason::Fingerprint { .. })));
    assert!(matches!(reasons[2], ("c3", RefusalReason::Shape { expected: [4, 7], actual: [5, 7], .. })));
    assert!(matches!(reasons[3], ("c4", RefusalReason::UnknownTarget { layer }) if layer == "model.layers.2.self_attn.q_proj"));
    assert!(matches!(reasons[4], ("c5", RefusalReason::MissingTarget { .. })));
    assert!(matches!(reasons[5], ("c6", RefusalReason::NormOutlier { .. })));
    assert!(matches!(reasons[6], ("c7", RefusalReason::NoSamples)));
    assert!(matches!(reasons[7], ("c0", RefusalReason::Duplicate)));
    for r in &agg.refused {
        assert!(r.to_string().starts_with(&format!("client `{}` refused: ", r.client)), "{r}");
    }
    assert_eq!(agg.adapter.config().base_fingerprint().unwrap().as_str(), "base-1");
    // The expected fingerprint wins over the majority; shapes against the base.
    let mut opts = AggregateOptions::default();
    opts.expected_fingerprint = Some(BaseFingerprint::new("base-2"));
    assert_eq!(aggregate(&ups, &opts).unwrap().accepted, ["c2"]);
    opts.expected_fingerprint = None;
    opts.base_shapes =
        Some(tailor_adapters::peft::BaseShapes { n_layers: 2, d_model: 7, q_dim: 11, kv_dim: 5, ffn_dim: 3 });
    let agg = aggregate(&ups, &opts).unwrap();
    assert_eq!(agg.accepted, ["c3"], "{:?}", agg.refused);
    // Nothing left: an error listing every refusal.
    let err = aggregate(&ups[1..2], &AggregateOptions::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Refused);
    assert!(err.to_string().contains("client `c1` refused: NaN"), "{err}");
    let json = serde_json::to_value(&agg.refused).unwrap();
    assert_eq!(json[0]["detail"]["kind"], "shape");
}

#[test]
fn median_and_trimmed_mean() {
    let mut rng = rng();
    let mut ups = clients(&mut rng, &[2, 2, 2, 2, 2]);
    for u in &mut ups {
        u.samples = 1;
    }
    // Trimmed mean with nothing trimmed = the unweighted mean = exact with equal samples.
    let mut o = no_outlier_check(Method::Exact);
    o.robust = Robust::TrimmedMean(0.0);
    let agg = aggregate(&ups, &o).unwrap();
    assert!(agg.report.relative_error_vs_exact.unwrap() < 1e-6);
    // The median ignores one wild client; the mean does not.
    let wild = ups[4].adapter.clone();
    for ((l, t), _) in wild.iter() {
        ups[4].adapter.get_mut(l, t).unwrap().b_mut().iter_mut().for_each(|x| *x *= 1e4);
    }
    o.robust = Robust::Median;
    let med = aggregate(&ups, &o).unwrap();
    let mean = aggregate(&ups, &no_outlier_check(Method::Exact)).unwrap();
    let (m, x) = (norm(&dense(&med.adapter, 0, Target::Q)), norm(&dense(&mean.adapter, 0, Target::Q)));
    assert!(m * 100.0 < x, "median {m}, mean {x}");
    o.robust = Robust::TrimmedMean(0.5);
    assert!(aggregate(&ups, &o).is_err());
}

#[test]
fn invalid_options_are_errors() {
    let mut rng = rng();
    let ups = clients(&mut rng, &[2, 2]);
    let bad = [
        AggregateOptions::default().with_rank(0),
        AggregateOptions::default().with_noise(1.0, DpMode::Central, 0),
        AggregateOptions::new(Method::FedIt).with_clip(1.0).with_noise(1.0, DpMode::Central, 0),
        AggregateOptions::new(Method::FedIt).with_rank(3),
        AggregateOptions::default().with_clip(-1.0),
    ];
    for o in bad {
        let e = aggregate(&ups, &o).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{o:?}: {e}");
    }
    assert_eq!("fedit".parse::<Method>().unwrap(), Method::FedIt);
    assert_eq!("trimmed:0.1".parse::<Robust>().unwrap(), Robust::TrimmedMean(0.1));
    assert!("mean-ish".parse::<Robust>().is_err());
    assert_eq!("local".parse::<DpMode>().unwrap(), DpMode::Local);
}
