//! The training forward computes what the decode path computes.

use std::sync::Arc;

use candle_core::quantized::GgmlDType;
use tailor::adapters::LoraSet;
use tailor::LoraHook;

use crate::common::{fresh_seed, random_tokens, tiny};

fn log_softmax(logits: &[f32], vocab: usize) -> Vec<f32> {
    logits
        .chunks(vocab)
        .flat_map(|r| {
            let m = r.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let lse = m + r.iter().map(|x| (x - m).exp()).sum::<f32>().ln();
            r.iter().map(move |x| x - lse)
        })
        .collect()
}

/// The decode path rounds keys, values and attention weights to f16 (and, for quantized
/// weights, activations to 8 bits); the training forward is f32 throughout. On an F32 tiny
/// model the two agree to 8e-2 in every log-probability (8e-3 on average; measured ~3e-2 and ~3e-3), with and without a LoRA adapter.
#[test]
fn training_forward_matches_the_decode_path() {
    let seed = fresh_seed();
    let (_d, engine) = tiny(GgmlDType::F32, seed);
    let vocab = engine.model_config().vocab_size;
    let tokens = random_tokens(&engine, 60, seed);
    let adapter = tailor::testing::random_lora(&engine, 4, 0.2, seed + 1).unwrap();
    for with_lora in [false, true] {
        let mut s = engine.new_session();
        if with_lora {
            s.set_hooks(LoraHook::from_set(&engine, &LoraSet::new().with(Arc::new(adapter.clone()), 1.0)).unwrap().into_hooks());
        }
        let want = log_softmax(&s.logits_all(&tokens).unwrap(), vocab);
        let got = tailor_trainer::testing::log_softmax_all(&engine, with_lora.then_some(&adapter), &tokens).unwrap();
        let max = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        let mean = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).sum::<f32>() / got.len() as f32;
        assert!(max < 8e-2 && mean < 8e-3, "seed {seed}, lora {with_lora}: max |Δ log p| = {max}, mean {mean}");
    }
}

/// LoRA with B = 0 is the base exactly.
#[test]
fn zero_b_is_the_base_exactly() {
    let seed = fresh_seed();
    let (_d, engine) = tiny(GgmlDType::Q8_0, seed);
    let tokens = random_tokens(&engine, 10, seed);
    let mut a = tailor::testing::random_lora(&engine, 4, 0.2, seed).unwrap();
    let keys: Vec<_> = a.iter().map(|(k, _)| k).collect();
    for (l, t) in keys {
        a.get_mut(l, t).unwrap().b_mut().fill(0.0);
    }
    let with = tailor_trainer::testing::log_softmax_all(&engine, Some(&a), &tokens).unwrap();
    let without = tailor_trainer::testing::log_softmax_all(&engine, None, &tokens).unwrap();
    assert_eq!(with, without, "seed {seed}");
}
