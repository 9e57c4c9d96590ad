//! Multi-token prefill kernels (`dot4_*`, `dot2x4_q4_1_q8_1`): every set against its own
//! single-token dots (bit for bit) and against the scalar reference; tolerances in the parent
//! module's table.

use super::{
    bound_q4_0, bound_q4_1, bound_q8_0, check_close, fresh_rng, random_q4_0, random_q4_1,
    random_q8_0, random_q8_1, LENS, U,
};
use crate::kernels::{scalar, BlockQ4_1, BlockQ8_0, BlockQ8_1, Kernels};

/// Checks one four-token dot of kernel set `k` against four scalar single dots (within `tol`
/// per token) and against four single dots of the same set (bit for bit).
#[allow(clippy::too_many_arguments)]
fn check_dot4<X, Y>(
    what: &str,
    k: &Kernels,
    seed: u64,
    got: [f32; 4],
    x: &[X],
    y: [&[Y]; 4],
    scalar_dot: fn(&[X], &[Y]) -> f32,
    same_set_dot: fn(&[X], &[Y]) -> f32,
    bound: fn(&[X], &[Y]) -> f64,
) {
    let nb = x.len();
    for (t, (&got, yt)) in got.iter().zip(y).enumerate() {
        let tol = 2.0 * (nb as f64 + 8.0) * U * bound(x, yt);
        check_close(
            &format!("{what} token {t} of 4, {nb} blocks"),
            k.name(),
            seed,
            got,
            scalar_dot(x, yt),
            tol,
        );
        let single = same_set_dot(x, yt);
        assert_eq!(
            got.to_bits(),
            single.to_bits(),
            "{what} token {t} of 4, {nb} blocks [{}] seed {seed}: x4 gives {got:e}, single {single:e}",
            k.name()
        );
    }
}

#[test]
fn dot4s_match_four_single_dots() {
    let (mut rng, seed) = fresh_rng();
    // Every set, scalar included: its x4 must equal its own single dot too.
    let all = Kernels::available();
    for _ in 0..20 {
        for nb in LENS {
            let x = random_q4_0(&mut rng, nb);
            let y: [Vec<BlockQ8_0>; 4] = std::array::from_fn(|_| random_q8_0(&mut rng, nb));
            let y = [&y[0][..], &y[1], &y[2], &y[3]];
            for k in &all {
                let got = (k.dot4_q4_0_q8_0)(&x, y);
                check_dot4(
                    "dot4 q4_0·q8_0",
                    k,
                    seed,
                    got,
                    &x,
                    y,
                    scalar::vec_dot_q4_0_q8_0,
                    k.dot_q4_0_q8_0,
                    bound_q4_0,
                );
            }

            let x = random_q4_1(&mut rng, nb);
            let y: [Vec<BlockQ8_1>; 4] = std::array::from_fn(|_| random_q8_1(&mut rng, nb));
            let y = [&y[0][..], &y[1], &y[2], &y[3]];
            for k in &all {
                let got = (k.dot4_q4_1_q8_1)(&x, y);
                check_dot4(
                    "dot4 q4_1·q8_1",
                    k,
                    seed,
                    got,
                    &x,
                    y,
                    scalar::vec_dot_q4_1_q8_1,
                    k.dot_q4_1_q8_1,
                    bound_q4_1,
                );
            }

            let x = random_q8_0(&mut rng, nb);
            let y: [Vec<BlockQ8_0>; 4] = std::array::from_fn(|_| random_q8_0(&mut rng, nb));
            let y = [&y[0][..], &y[1], &y[2], &y[3]];
            for k in &all {
                let got = (k.dot4_q8_0_q8_0)(&x, y);
                check_dot4(
                    "dot4 q8_0·q8_0",
                    k,
                    seed,
                    got,
                    &x,
                    y,
                    scalar::vec_dot_q8_0_q8_0,
                    k.dot_q8_0_q8_0,
                    bound_q8_0,
                );
            }
        }
    }
}

#[test]
fn dot2x4_matches_eight_single_dots() {
    let (mut rng, seed) = fresh_rng();
    for _ in 0..20 {
        for nb in LENS.into_iter().chain([4, 5, 47]) {
            let x = [random_q4_1(&mut rng, nb), random_q4_1(&mut rng, nb)];
            let y: [Vec<BlockQ8_1>; 4] = std::array::from_fn(|_| random_q8_1(&mut rng, nb));
            let y = [&y[0][..], &y[1], &y[2], &y[3]];
            for k in Kernels::available() {
                let got = (k.dot2x4_q4_1_q8_1)(&x[0], &x[1], y);
                for (r, (got, x)) in got.into_iter().zip(&x).enumerate() {
                    check_dot4(
                        &format!("dot2x4 q4_1·q8_1 row {r} of 2"),
                        k,
                        seed,
                        got,
                        x,
                        y,
                        scalar::vec_dot_q4_1_q8_1,
                        k.dot_q4_1_q8_1,
                        bound_q4_1,
                    );
                }
            }
        }
    }
}

#[test]
fn dot2x4_keeps_rows_and_tokens_apart() {
    // A zero row, a negated token, a zero token: a mixed-up lane shows at once.
    let (mut rng, seed) = fresh_rng();
    for k in Kernels::available() {
        for nb in LENS {
            let x = random_q4_1(&mut rng, nb);
            let zero_row = vec![BlockQ4_1::default(); nb];
            let a = random_q8_1(&mut rng, nb);
            let neg: Vec<BlockQ8_1> = a
                .iter()
                .map(|b| BlockQ8_1 {
                    d: b.d ^ 0x8000,
                    ..*b
                })
                .collect();
            let zero = vec![BlockQ8_1::default(); nb];
            let b = random_q8_1(&mut rng, nb);
            let y = [&a[..], &zero, &neg, &b];
            for (x0, x1) in [(&x, &zero_row), (&zero_row, &x)] {
                let got = (k.dot2x4_q4_1_q8_1)(x0, x1, y);
                let want = [x0, x1].map(|xr| y.map(|yt| (k.dot_q4_1_q8_1)(xr, yt)));
                assert_eq!(got, want, "[{}] seed {seed}", k.name());
            }
        }
    }
}

#[test]
fn dot4s_keep_tokens_apart() {
    // One token all zero, one the negation of another: a mixed-up lane shows at once.
    let (mut rng, seed) = fresh_rng();
    for k in Kernels::available() {
        for nb in LENS {
            let x = random_q4_1(&mut rng, nb);
            let a = random_q8_1(&mut rng, nb);
            let neg: Vec<BlockQ8_1> = a
                .iter()
                .map(|b| BlockQ8_1 {
                    d: b.d ^ 0x8000,
                    ..*b
                })
                .collect();
            let zero = vec![BlockQ8_1::default(); nb];
            let b = random_q8_1(&mut rng, nb);
            let got = (k.dot4_q4_1_q8_1)(&x, [&a, &zero, &neg, &b]);
            let want = [&a, &zero, &neg, &b].map(|y| (k.dot_q4_1_q8_1)(&x, y));
            assert_eq!(got, want, "[{}] seed {seed}", k.name());

            let x = random_q8_0(&mut rng, nb);
            let a = random_q8_0(&mut rng, nb);
            let zero = vec![BlockQ8_0::default(); nb];
            let b = random_q8_0(&mut rng, nb);
            let c = random_q8_0(&mut rng, nb);
            let got = (k.dot4_q8_0_q8_0)(&x, [&zero, &a, &b, &c]);
            let want = [&zero, &a, &b, &c].map(|y| (k.dot_q8_0_q8_0)(&x, y));
            assert_eq!(got, want, "[{}] seed {seed}", k.name());
            assert_eq!(got[0], 0.0);
        }
    }
}
