//! Kernel benchmark: nanoseconds per row dot product (and per row quantized) for the scalar
//! reference and every kernel set this CPU can run, at SmolLM2-135M's widths (576 = d_model,
//! 1536 = FFN), with the speedup of the detected set over scalar; then, for prefill, one
//! weight row against four tokens: one `dot4_*` call against four single-token calls; then
//! two weight rows against four tokens: one `dot2x4_q4_1_q8_1` call against two `dot4` calls;
//! then
//! single-token dots (decode) of the `avx512vnni` set (zmm) against the `avxvnni` set (ymm), when
//! both are available (`cargo bench -p tailor --bench kernels -- decode` for only those); then
//! attention against the f16 KV cache at head width 64: `dot_f32_f16` (score of one cached
//! key) and `axpy_f16` (add one weighted cached value), ns per call.
//!
//! Then single- and four-token products over the 16-row interleaved tiles the decode path
//! repacks weights into, against the row kernels (`-- interleaved` for only those).
//!
//! `cargo bench -p tailor --bench kernels`
//!
//! Each measurement times one pass over a 256-row matrix (a small mat-vec, rows resident in
//! L1/L2 as in a tiled matmul) and reports the median over many passes.

use std::hint::black_box;
use std::time::Instant;

use tailor::kernels::{scalar, BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1, Kernels, QK};

const ROWS: usize = 256;
const WIDTHS: [usize; 2] = [576, 1536];

/// Deterministic pseudo-random floats in [-1, 1) (a 64-bit LCG; no dependency needed).
fn random_floats(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Median nanoseconds per row of `pass`, which processes `ROWS` rows.
fn time_per_row(mut pass: impl FnMut() -> f32) -> f64 {
    // Warm up, then size the repetition count to ~0.2 s per measurement.
    let t = Instant::now();
    let mut warm = 0;
    while t.elapsed().as_millis() < 20 {
        black_box(pass());
        warm += 1;
    }
    let per_pass = t.elapsed().as_secs_f64() / f64::from(warm);
    let reps = ((0.2 / per_pass) as usize).clamp(21, 20_001);
    let mut samples: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            black_box(pass());
            t.elapsed().as_secs_f64() * 1e9 / ROWS as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

struct Data {
    w_q4_0: Vec<BlockQ4_0>,
    w_q4_1: Vec<BlockQ4_1>,
    w_q8_0: Vec<BlockQ8_0>,
    w_f32: Vec<f32>,
    x_f32: Vec<f32>,
    x_q8_0: Vec<BlockQ8_0>,
    x_q8_1: Vec<BlockQ8_1>,
    /// Four tokens' activations, for the four-token kernels.
    t_q8_0: [Vec<BlockQ8_0>; 4],
    t_q8_1: [Vec<BlockQ8_1>; 4],
}

impl Data {
    fn new(width: usize) -> Self {
        let nb = width / QK;
        let w = random_floats(1, ROWS * width);
        let x = random_floats(2, width);
        let mut d = Data {
            w_q4_0: vec![BlockQ4_0::default(); ROWS * nb],
            w_q4_1: vec![BlockQ4_1::default(); ROWS * nb],
            w_q8_0: vec![BlockQ8_0::default(); ROWS * nb],
            w_f32: w.clone(),
            x_f32: x.clone(),
            x_q8_0: vec![BlockQ8_0::default(); nb],
            x_q8_1: vec![BlockQ8_1::default(); nb],
            t_q8_0: std::array::from_fn(|_| vec![BlockQ8_0::default(); nb]),
            t_q8_1: std::array::from_fn(|_| vec![BlockQ8_1::default(); nb]),
        };
        for (t, (y0, y1)) in d.t_q8_0.iter_mut().zip(&mut d.t_q8_1).enumerate() {
            let x = random_floats(3 + t as u64, width);
            scalar::quantize_row_q8_0(&x, y0);
            scalar::quantize_row_q8_1(&x, y1);
        }
        scalar::quantize_row_q4_0(&w, &mut d.w_q4_0);
        scalar::quantize_row_q4_1(&w, &mut d.w_q4_1);
        scalar::quantize_row_q8_0(&w, &mut d.w_q8_0);
        scalar::quantize_row_q8_0(&x, &mut d.x_q8_0);
        scalar::quantize_row_q8_1(&x, &mut d.x_q8_1);
        d
    }
}

const OPS: [&str; 6] = [
    "q4_0·q8_0",
    "q4_1·q8_1",
    "q8_0·q8_0",
    "f32·f32",
    "quantize q8_0",
    "quantize q8_1",
];

/// ns per row of operation `op` with kernels `k` at `width`.
fn measure(k: &Kernels, op: &str, width: usize, d: &Data) -> f64 {
    let nb = width / QK;
    let x = black_box(d);
    match op {
        "q4_0·q8_0" => time_per_row(|| {
            x.w_q4_0
                .chunks_exact(nb)
                .map(|w| (k.dot_q4_0_q8_0)(w, &x.x_q8_0))
                .sum()
        }),
        "q4_1·q8_1" => time_per_row(|| {
            x.w_q4_1
                .chunks_exact(nb)
                .map(|w| (k.dot_q4_1_q8_1)(w, &x.x_q8_1))
                .sum()
        }),
        "q8_0·q8_0" => time_per_row(|| {
            x.w_q8_0
                .chunks_exact(nb)
                .map(|w| (k.dot_q8_0_q8_0)(w, &x.x_q8_0))
                .sum()
        }),
        "f32·f32" => time_per_row(|| {
            x.w_f32
                .chunks_exact(width)
                .map(|w| (k.dot_f32)(w, &x.x_f32))
                .sum()
        }),
        "quantize q8_0" => {
            let mut out = vec![BlockQ8_0::default(); nb];
            time_per_row(|| {
                x.w_f32
                    .chunks_exact(width)
                    .map(|w| {
                        (k.quantize_q8_0)(w, &mut out);
                        f32::from(out[0].qs[0])
                    })
                    .sum()
            })
        }
        "quantize q8_1" => {
            let mut out = vec![BlockQ8_1::default(); nb];
            time_per_row(|| {
                x.w_f32
                    .chunks_exact(width)
                    .map(|w| {
                        (k.quantize_q8_1)(w, &mut out);
                        f32::from(out[0].qs[0])
                    })
                    .sum()
            })
        }
        _ => unreachable!("unknown op {op}"),
    }
}

const OPS4: [&str; 3] = ["q4_0·q8_0", "q4_1·q8_1", "q8_0·q8_0"];

/// ns per row × 4 tokens of operation `op` with kernels `k` at `width`: `(four single-token
/// calls, one four-token call)`.
fn measure4(k: &Kernels, op: &str, width: usize, d: &Data) -> (f64, f64) {
    let nb = width / QK;
    let x = black_box(d);
    let t0 = [&x.t_q8_0[0][..], &x.t_q8_0[1], &x.t_q8_0[2], &x.t_q8_0[3]];
    let t1 = [&x.t_q8_1[0][..], &x.t_q8_1[1], &x.t_q8_1[2], &x.t_q8_1[3]];
    let sum4 = |r: [f32; 4]| r[0] + r[1] + r[2] + r[3];
    match op {
        "q4_0·q8_0" => (
            time_per_row(|| {
                x.w_q4_0
                    .chunks_exact(nb)
                    .map(|w| sum4(t0.map(|y| (k.dot_q4_0_q8_0)(w, y))))
                    .sum()
            }),
            time_per_row(|| {
                x.w_q4_0
                    .chunks_exact(nb)
                    .map(|w| sum4((k.dot4_q4_0_q8_0)(w, t0)))
                    .sum()
            }),
        ),
        "q4_1·q8_1" => (
            time_per_row(|| {
                x.w_q4_1
                    .chunks_exact(nb)
                    .map(|w| sum4(t1.map(|y| (k.dot_q4_1_q8_1)(w, y))))
                    .sum()
            }),
            time_per_row(|| {
                x.w_q4_1
                    .chunks_exact(nb)
                    .map(|w| sum4((k.dot4_q4_1_q8_1)(w, t1)))
                    .sum()
            }),
        ),
        "q8_0·q8_0" => (
            time_per_row(|| {
                x.w_q8_0
                    .chunks_exact(nb)
                    .map(|w| sum4(t0.map(|y| (k.dot_q8_0_q8_0)(w, y))))
                    .sum()
            }),
            time_per_row(|| {
                x.w_q8_0
                    .chunks_exact(nb)
                    .map(|w| sum4((k.dot4_q8_0_q8_0)(w, t0)))
                    .sum()
            }),
        ),
        _ => unreachable!("unknown op {op}"),
    }
}

/// ns per row × token of two `Q4_1` weight rows against four tokens with kernels `k` at
/// `width`: `(two dot4 calls, one dot2x4 call)`.
fn measure2x4(k: &Kernels, width: usize, d: &Data) -> (f64, f64) {
    let nb = width / QK;
    let x = black_box(d);
    let t1 = [&x.t_q8_1[0][..], &x.t_q8_1[1], &x.t_q8_1[2], &x.t_q8_1[3]];
    let sum = |r: [[f32; 4]; 2]| r.iter().flatten().sum::<f32>();
    // `time_per_row` divides by ROWS; a pass covers ROWS rows × 4 tokens.
    let per_token = |t: f64| t / 4.0;
    (
        per_token(time_per_row(|| {
            x.w_q4_1
                .chunks_exact(2 * nb)
                .map(|w| {
                    let (w0, w1) = w.split_at(nb);
                    sum([(k.dot4_q4_1_q8_1)(w0, t1), (k.dot4_q4_1_q8_1)(w1, t1)])
                })
                .sum()
        })),
        per_token(time_per_row(|| {
            x.w_q4_1
                .chunks_exact(2 * nb)
                .map(|w| {
                    let (w0, w1) = w.split_at(nb);
                    sum((k.dot2x4_q4_1_q8_1)(w0, w1, t1))
                })
                .sum()
        })),
    )
}

/// Head width of the attention benchmark (SmolLM2-135M's).
const HEAD: usize = 64;

/// ns per cached position (one `dot_f32_f16` or `axpy_f16` call) with kernels `k`, over a
/// cache of `ROWS` positions: `(dot, axpy)`.
fn measure_attention(k: &Kernels) -> (f64, f64) {
    let to_f16 = |v: Vec<f32>| -> Vec<u16> {
        v.into_iter()
            .map(|x| half::f16::from_f32(4.0 * x).to_bits())
            .collect()
    };
    let cache = black_box(to_f16(random_floats(10, ROWS * HEAD)));
    let q: Vec<f32> = to_f16(random_floats(11, HEAD))
        .into_iter()
        .map(|b| half::f16::from_bits(b).to_f32())
        .collect();
    let w = black_box(random_floats(12, ROWS));
    let q = black_box(q);
    let dot = time_per_row(|| {
        cache
            .chunks_exact(HEAD)
            .map(|kj| (k.dot_f32_f16)(&q, kj))
            .sum()
    });
    let mut out = vec![0.0f32; HEAD];
    let axpy = time_per_row(|| {
        for (&wj, vj) in w.iter().zip(cache.chunks_exact(HEAD)) {
            (k.axpy_f16)(wj, vj, &mut out);
        }
        out[0]
    });
    (dot, axpy)
}

/// Single-token (decode) dots of the `avx512vnni` set against the same dots of the
/// `avxvnni` set (the ymm kernels it used before its zmm ones; bit-identical results), ns per
/// row, when both are available.
fn decode_rows() {
    let all = Kernels::available();
    let find = |name: &str| all.iter().copied().find(|k| k.name() == name);
    let (Some(old), Some(new)) = (find("avxvnni"), find("avx512vnni")) else {
        return;
    };
    println!(
        "\nsingle-token dots (decode): ns per row, avxvnni (ymm) vs avx512vnni (zmm); \
         gain = avxvnni / avx512vnni\n"
    );
    println!(
        "{:<14} {:>5} {:>9} {:>11} {:>6}",
        "op", "width", "avxvnni", "avx512vnni", "gain"
    );
    for width in DECODE_WIDTHS {
        let data = Data::new(width);
        for op in OPS4 {
            let (t_old, t_new) = (
                measure(old, op, width, &data),
                measure(new, op, width, &data),
            );
            println!(
                "{op:<14} {width:>5} {t_old:>9.1} {t_new:>11.1} {:>5.2}x",
                t_old / t_new
            );
        }
    }
}

/// Single-token (decode) and four-token products over 16-row interleaved tiles
/// (`kernels::interleaved`, the layout the decode path repacks the weights into) against the
/// detected row kernels on the same weights, ns per row (per row × token for four tokens).
fn interleaved_rows() {
    use tailor::kernels::interleaved::{self, act_sides, ActQ8, Interleaved, Line};
    let row = Kernels::detect();
    println!(
        "\ninterleaved 16-row tiles: ns per row·token; row = detected row kernel ({}), gain = row / best tiles\n",
        row.name()
    );
    let sets = Interleaved::available();
    let mut header = format!("{:<10} {:>5} {:>4} {:>8}", "weights", "width", "tok", "row");
    for k in &sets {
        header += &format!(" {:>11}", k.name());
    }
    println!("{header} {:>6}", "gain");
    for width in [576, 1536] {
        let d = Data::new(width);
        let nb = width / QK;
        let xs: Vec<BlockQ8_0> = d.t_q8_0.iter().flatten().copied().collect();
        let (mut xd, mut xc, mut xs128) = (vec![0f32; 4 * nb], vec![0f32; 4 * nb], vec![0i32; 4 * nb]);
        act_sides(&xs, &mut xd, &mut xc, &mut xs128);
        let tiles = ROWS / interleaved::ROWS * nb;
        let (mut q41, mut s41) = (vec![Line::default(); tiles * 4], vec![0u16; tiles * 32]);
        interleaved::repack_q4_1(&d.w_q4_1, ROWS, nb, &mut q41, &mut s41);
        let (mut q80, mut s80) = (vec![Line::default(); tiles * 8], vec![0u16; tiles * 16]);
        interleaved::repack_q8_0(&d.w_q8_0, ROWS, nb, &mut q80, &mut s80);
        for tok in [1usize, 4] {
            let x = ActQ8 { q: &xs[..tok * nb], d: &xd[..tok * nb], c: &xc[..tok * nb], s128: &xs128[..tok * nb], bpr: nb };
            for (name, is41) in [("q4_1", true), ("q8_0", false)] {
                let t_row = time_per_row(|| {
                    let mut s = 0.0;
                    for r in 0..ROWS {
                        if tok == 1 {
                            s += if is41 {
                                (row.dot_q4_1_q8_1)(&d.w_q4_1[r * nb..(r + 1) * nb], &d.x_q8_1)
                            } else {
                                (row.dot_q8_0_q8_0)(&d.w_q8_0[r * nb..(r + 1) * nb], &d.x_q8_0)
                            };
                        } else if is41 {
                            let t = &d.t_q8_1;
                            s += (row.dot4_q4_1_q8_1)(&d.w_q4_1[r * nb..(r + 1) * nb], [&t[0], &t[1], &t[2], &t[3]])[0];
                        } else {
                            let t = &d.t_q8_0;
                            s += (row.dot4_q8_0_q8_0)(&d.w_q8_0[r * nb..(r + 1) * nb], [&t[0], &t[1], &t[2], &t[3]])[0];
                        }
                    }
                    s
                }) / tok as f64;
                let mut line = format!("{name:<10} {width:>5} {tok:>4} {t_row:>8.2}");
                let mut best = f64::INFINITY;
                for k in &sets {
                    let mut out = vec![0f32; tok * interleaved::ROWS];
                    let t = time_per_row(|| {
                        for g in 0..ROWS / interleaved::ROWS {
                            if is41 {
                                (k.gemm_q4_1)(&q41[g * nb * 4..(g + 1) * nb * 4], &s41[g * nb * 32..(g + 1) * nb * 32], &x, &mut out);
                            } else {
                                (k.gemm_q8_0)(&q80[g * nb * 8..(g + 1) * nb * 8], &s80[g * nb * 16..(g + 1) * nb * 16], &x, &mut out);
                            }
                        }
                        out[0]
                    }) / tok as f64;
                    best = best.min(t);
                    line += &format!(" {t:>11.2}");
                }
                println!("{line} {:>5.2}x", t_row / best);
            }
        }
    }
}

/// Decode widths: the model's two, and 512 (no tail after the zmm kernel's four-block loop).
const DECODE_WIDTHS: [usize; 3] = [512, 576, 1536];

fn main() {
    if std::env::args().any(|a| a == "decode") {
        decode_rows();
        return;
    }
    if std::env::args().any(|a| a == "interleaved") {
        interleaved_rows();
        return;
    }
    let detected = Kernels::detect();
    let all = Kernels::available();
    let names: Vec<&str> = all.iter().map(|k| k.name()).collect();
    println!(
        "kernels: detected = {} (available: {})",
        detected.name(),
        names.join(", ")
    );
    println!("ns per row (median of passes over {ROWS} rows); speedup = scalar / detected\n");

    let mut header = format!("{:<14} {:>5}", "op", "width");
    for k in all.iter().rev() {
        header += &format!(" {:>12}", k.name());
    }
    header += &format!(" {:>9}", "speedup");
    println!("{header}");
    for width in WIDTHS {
        let data = Data::new(width);
        for op in OPS {
            let mut line = format!("{op:<14} {width:>5}");
            let (mut t_scalar, mut t_detected) = (f64::NAN, f64::NAN);
            for k in all.iter().rev() {
                let t = measure(k, op, width, &data);
                if k.name() == "scalar" {
                    t_scalar = t;
                }
                if k.name() == detected.name() {
                    t_detected = t;
                }
                line += &format!(" {t:>12.1}");
            }
            line += &format!(" {:>8.1}x", t_scalar / t_detected);
            println!("{line}");
        }
    }

    println!(
        "\nfour tokens per weight row (prefill): ns per row × 4 tokens; 4×1 = four single-token \
         calls, x4 = one dot4 call, gain = 4×1 / x4\n"
    );
    let mut header = format!("{:<14} {:>5}", "op", "width");
    for k in all.iter().rev() {
        header += &format!(" | {:>12} {:>7} {:>7} {:>5}", k.name(), "4×1", "x4", "gain");
    }
    println!("{header}");
    for width in WIDTHS {
        let data = Data::new(width);
        for op in OPS4 {
            let mut line = format!("{op:<14} {width:>5}");
            for k in all.iter().rev() {
                let (t1, t4) = measure4(k, op, width, &data);
                line += &format!(" | {:>12} {t1:>7.1} {t4:>7.1} {:>4.2}x", "", t1 / t4);
            }
            println!("{line}");
        }
    }

    println!(
        "\ntwo weight rows × four tokens (prefill): ns per row × token product; 2×x4 = two dot4 \
         calls, 2x4 = one dot2x4 call, gain = 2×x4 / 2x4\n"
    );
    let mut header = format!("{:<14} {:>5}", "op", "width");
    for k in all.iter().rev() {
        header += &format!(
            " | {:>12} {:>7} {:>7} {:>5}",
            k.name(),
            "2×x4",
            "2x4",
            "gain"
        );
    }
    println!("{header}");
    for width in WIDTHS {
        let data = Data::new(width);
        let mut line = format!("{:<14} {width:>5}", "q4_1·q8_1");
        for k in all.iter().rev() {
            let (t4, t24) = measure2x4(k, width, &data);
            line += &format!(" | {:>12} {t4:>7.2} {t24:>7.2} {:>4.2}x", "", t4 / t24);
        }
        println!("{line}");
    }

    decode_rows();
    interleaved_rows();

    println!(
        "\nattention on the f16 KV cache, head width {HEAD}: ns per call (one cached position, \
         median of passes over {ROWS}); speedup = scalar / detected\n"
    );
    let mut header = format!("{:<14} {:>5}", "op", "width");
    for k in all.iter().rev() {
        header += &format!(" {:>12}", k.name());
    }
    header += &format!(" {:>9}", "speedup");
    println!("{header}");
    let times: Vec<(&str, (f64, f64))> = all
        .iter()
        .rev()
        .map(|k| (k.name(), measure_attention(k)))
        .collect();
    for (op, pick) in [
        (
            "f32·f16 dot",
            (|t: (f64, f64)| t.0) as fn((f64, f64)) -> f64,
        ),
        ("axpy f16", |t| t.1),
    ] {
        let mut line = format!("{op:<14} {HEAD:>5}");
        let (mut t_scalar, mut t_detected) = (f64::NAN, f64::NAN);
        for &(name, t) in &times {
            let t = pick(t);
            if name == "scalar" {
                t_scalar = t;
            }
            if name == detected.name() {
                t_detected = t;
            }
            line += &format!(" {t:>12.1}");
        }
        line += &format!(" {:>8.1}x", t_scalar / t_detected);
        println!("{line}");
    }
}
