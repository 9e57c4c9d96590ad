//! Merging against dense f64 recomputations of the deltas.

use rand::{Rng, SeedableRng};
use tailor_adapters::{merge, BaseFingerprint, LoraAdapter, LoraConfig, LoraWeights, MergeMethod, MergeOptions, Target};

const SHAPES: [(Target, usize, usize); 2] = [(Target::Q, 12, 16), (Target::Down, 20, 12)];

fn random(r: usize, alpha: f64, seed: u64) -> LoraAdapter {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut a = LoraAdapter::new(LoraConfig::new(r, alpha, &[Target::Q, Target::Down])).unwrap();
    for layer in 0..2 {
        for (t, i, o) in SHAPES {
            let av = (0..r * i).map(|_| rng.random_range(-1.0..1.0)).collect();
            let bv = (0..o * r).map(|_| rng.random_range(-1.0..1.0)).collect();
            a.insert(layer, t, LoraWeights::new(r, i, o, av, bv).unwrap()).unwrap();
        }
    }
    a
}

/// `scale·B·A` as a dense `[out, in]` f64 matrix.
fn dense(a: &LoraAdapter, layer: usize, t: Target) -> Vec<f64> {
    let w = a.get(layer, t).unwrap();
    let (r, i, o) = (w.r(), w.in_features(), w.out_features());
    let mut d = vec![0f64; o * i];
    for oo in 0..o {
        for ii in 0..i {
            d[oo * i + ii] = a.scale() as f64 * (0..r).map(|k| w.b()[oo * r + k] as f64 * w.a()[k * i + ii] as f64).sum::<f64>();
        }
    }
    d
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

#[test]
fn linear_merge_at_full_rank_is_the_weighted_sum() {
    let seed = rand::random::<u64>();
    let (a, b) = (random(3, 6.0, seed), random(2, 16.0, seed ^ 1));
    let m = merge(&[(&a, 0.7), (&b, -1.3)], &MergeOptions::linear(Some(5))).unwrap();
    assert_eq!(m.config().r, 5);
    for layer in 0..2 {
        for (t, _, _) in SHAPES {
            let want: Vec<f64> = dense(&a, layer, t).iter().zip(dense(&b, layer, t)).map(|(x, y)| 0.7 * x - 1.3 * y).collect();
            let got = dense(&m, layer, t);
            let err: Vec<f64> = got.iter().zip(&want).map(|(g, w)| g - w).collect();
            // f32 factors: relative error at f32 rounding level.
            assert!(norm(&err) <= 1e-5 * norm(&want), "seed {seed}: {} vs {}", norm(&err), norm(&want));
        }
    }
}

#[test]
fn truncated_merge_is_the_best_rank_r_approximation() {
    let seed = rand::random::<u64>();
    let (a, b) = (random(4, 8.0, seed), random(4, 4.0, seed ^ 7));
    let m = merge(&[(&a, 1.0), (&b, 1.0)], &MergeOptions::linear(Some(3))).unwrap();
    for layer in 0..2 {
        for (t, i, o) in SHAPES {
            let want: Vec<f64> = dense(&a, layer, t).iter().zip(dense(&b, layer, t)).map(|(x, y)| x + y).collect();
            let got = dense(&m, layer, t);
            let res: Vec<f64> = want.iter().zip(&got).map(|(w, g)| w - g).collect();
            // Eckart–Young: the residual of the truncated SVD is orthogonal to the kept row and
            // column spaces: resᵀ·B = 0 and res·Aᵀ = 0 (up to f32 rounding of the factors).
            let w = m.get(layer, t).unwrap();
            let r = w.r();
            let scale = norm(&want) * norm(&want);
            for k in 0..r {
                let col_b: f64 = (0..i).map(|ii| (0..o).map(|oo| res[oo * i + ii] * w.b()[oo * r + k] as f64).sum::<f64>().abs()).sum();
                let row_a: f64 = (0..o).map(|oo| (0..i).map(|ii| res[oo * i + ii] * w.a()[k * i + ii] as f64).sum::<f64>().abs()).sum();
                assert!(col_b <= 1e-4 * scale && row_a <= 1e-4 * scale, "seed {seed}: {col_b} {row_a}");
            }
            // The kept components are the largest: the sum has rank ≤ 8, so its top 3 singular
            // values hold at least 3/8 of its energy.
            let kept = norm(&got).powi(2);
            assert!(kept >= 3.0 / 8.0 * scale * (1.0 - 1e-6), "seed {seed}: kept {kept} of {scale}");
        }
    }
}

#[test]
fn ties_and_dare_against_a_direct_recomputation() {
    let seed = rand::random::<u64>();
    let (a, b) = (random(2, 2.0, seed), random(2, 2.0, seed ^ 3));
    // Full rank (12) so the factorisation is exact and only the combination is compared.
    let full = Some(12);
    let dare1 = merge(&[(&a, 0.5), (&b, 2.0)], &MergeOptions::linear(full).with_method(MergeMethod::Dare { density: 1.0, seed: 9 })).unwrap();
    let ties = merge(&[(&a, 0.5), (&b, 2.0)], &MergeOptions::linear(full).with_method(MergeMethod::Ties { density: 0.3 })).unwrap();
    let (t, i, o) = SHAPES[0];
    let da: Vec<f64> = dense(&a, 1, t).iter().map(|x| 0.5 * x).collect();
    let db: Vec<f64> = dense(&b, 1, t).iter().map(|x| 2.0 * x).collect();
    // DARE keeping everything is the weighted sum.
    let sum: Vec<f64> = da.iter().zip(&db).map(|(x, y)| x + y).collect();
    let err: Vec<f64> = dense(&dare1, 1, t).iter().zip(&sum).map(|(g, w)| g - w).collect();
    assert!(norm(&err) <= 1e-4 * norm(&sum), "seed {seed}");
    // TIES, written out plainly.
    let top = |d: &[f64]| {
        let k = (d.len() as f64 * 0.3).ceil() as usize;
        let mut m: Vec<f64> = d.iter().map(|x| x.abs()).collect();
        m.sort_by(|x, y| y.total_cmp(x));
        let th = m[k - 1];
        d.iter().map(|x| if x.abs() >= th { *x } else { 0.0 }).collect::<Vec<f64>>()
    };
    let (ta, tb) = (top(&da), top(&db));
    let want: Vec<f64> = (0..o * i)
        .map(|e| {
            let sign = (ta[e] + tb[e]).signum();
            let agree: Vec<f64> = [ta[e], tb[e]].into_iter().filter(|x| *x != 0.0 && x.signum() == sign).collect();
            if agree.is_empty() { 0.0 } else { agree.iter().sum::<f64>() / agree.len() as f64 }
        })
        .collect();
    let err: Vec<f64> = dense(&ties, 1, t).iter().zip(&want).map(|(g, w)| g - w).collect();
    assert!(norm(&err) <= 1e-4 * norm(&want), "seed {seed}: {} of {}", norm(&err), norm(&want));
    // DARE with dropping is reproducible from its seed and differs from the plain sum.
    let opts = MergeOptions::linear(full).with_method(MergeMethod::Dare { density: 0.5, seed: 4 });
    let d1 = merge(&[(&a, 0.5), (&b, 2.0)], &opts).unwrap();
    assert_eq!(d1, merge(&[(&a, 0.5), (&b, 2.0)], &opts).unwrap());
    assert_ne!(dense(&d1, 1, t), dense(&dare1, 1, t));
}

#[test]
fn merge_refuses_mixed_bases_and_bad_options() {
    let mut a = random(2, 2.0, 1);
    let mut b = random(2, 2.0, 2);
    a.set_base_fingerprint(BaseFingerprint::new("sha256:aa"));
    b.set_base_fingerprint(BaseFingerprint::new("sha256:bb"));
    assert!(merge(&[(&a, 1.0), (&b, 1.0)], &MergeOptions::default()).is_err());
    let c = random(2, 2.0, 3);
    let m = merge(&[(&a, 1.0), (&c, 1.0)], &MergeOptions::default()).unwrap();
    assert_eq!(m.config().base_fingerprint().map(|f| f.as_str()), Some("sha256:aa"));
    assert!(merge(&[], &MergeOptions::default()).is_err());
    assert!(merge(&[(&c, f32::NAN)], &MergeOptions::default()).is_err());
    assert!(merge(&[(&c, 1.0)], &MergeOptions::default().with_method(MergeMethod::Ties { density: 0.0 })).is_err());
}
