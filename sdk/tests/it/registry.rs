//! The adapter registry: hot swaps while sessions generate on other threads.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use candle_core::quantized::GgmlDType;
use tailor::{AdapterRegistry, Flow, GenerateParams, Prompt};

use crate::common::{spec, tiny};
use crate::lora::random_adapter;

fn greedy(n: usize) -> GenerateParams {
    let mut p = GenerateParams::default();
    p.max_tokens = n;
    p.ignore_eos = true;
    p
}

#[test]
fn swaps_while_generating_never_mix_sets() {
    // A fixed model: the four adapter states must give four different outputs for the test to
    // see a mix, which a random tiny model does not always do.
    let (_d, _p, engine) = tiny(spec(GgmlDType::Q8_0, 64, 11), 2);
    let reg = AdapterRegistry::new(&engine);
    reg.insert("a", random_adapter(&engine, 8, 1)).unwrap();
    reg.insert("b", random_adapter(&engine, 8, 2)).unwrap();
    let prompt = Prompt::Tokens(vec![5, 60, 61, 62, 63]);
    // What each state generates, computed alone.
    let states: [&[(&str, f32)]; 4] = [&[], &[("a", 1.0)], &[("b", 1.0)], &[("a", 0.5), ("b", 0.5)]];
    let mut expected = Vec::new();
    for st in states {
        reg.activate(st).unwrap();
        let mut s = engine.new_session();
        s.follow(reg.clone());
        expected.push(s.generate(&prompt, &greedy(12), &mut |_| Flow::Continue).unwrap().token_ids);
    }
    for i in 0..expected.len() {
        for j in i + 1..expected.len() {
            assert_ne!(expected[i], expected[j], "states {i} and {j} must be distinguishable");
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicUsize::new(0));
    // The same adapter "b" again (same seed): reloading it under its name must not change
    // outputs, and active sets keep working through the reload.
    let b_again = random_adapter(&engine, 8, 2);
    let swapper = {
        let (reg, stop, swaps) = (reg.clone(), stop.clone(), swaps.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                reg.activate(states[i % 4]).unwrap();
                if i % 7 == 0 {
                    reg.insert("b", b_again.clone()).unwrap();
                }
                i += 1;
                swaps.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        })
    };
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let (engine, reg, prompt, expected, swaps) = (engine.clone(), reg.clone(), prompt.clone(), expected.clone(), swaps.clone());
            std::thread::spawn(move || {
                let mut s = engine.new_session();
                s.follow(reg);
                // Generate until the swapper has swapped many times, so swaps land during
                // generations.
                let mut n = 0;
                while n < 25 || swaps.load(Ordering::SeqCst) < 300 {
                    let g = s.generate(&prompt, &greedy(12), &mut |_| Flow::Continue).unwrap();
                    assert!(expected.contains(&g.token_ids), "an output matching no single adapter set: {:?}", g.token_ids);
                    n += 1;
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    swapper.join().unwrap();
    assert!(swaps.load(Ordering::SeqCst) >= 300);
}

#[test]
fn registry_errors_and_listing() {
    let (_d, _p, engine) = tiny(spec(GgmlDType::Q8_0, 64, 3), 1);
    let reg = AdapterRegistry::new(&engine);
    assert!(reg.activate(&[("missing", 1.0)]).is_err());
    reg.insert("a", random_adapter(&engine, 4, 1)).unwrap();
    assert!(reg.activate(&[("a", f32::NAN)]).is_err());
    let g0 = reg.generation();
    reg.activate(&[("a", 0.5)]).unwrap();
    assert!(reg.generation() > g0);
    let l = reg.list();
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].active_weight, Some(0.5));
    assert_eq!(l[0].rank, 4);
    assert_eq!(l[0].source, None);
    // One member's weight changes, the others stay.
    reg.insert("b", random_adapter(&engine, 4, 2)).unwrap();
    assert!(reg.set_weight("missing", Some(1.0)).is_err());
    assert!(reg.set_weight("b", Some(f32::INFINITY)).is_err());
    reg.set_weight("b", Some(2.0)).unwrap();
    let weights = |reg: &AdapterRegistry| reg.list().iter().map(|a| a.active_weight).collect::<Vec<_>>();
    assert_eq!(weights(&reg), [Some(0.5), Some(2.0)]);
    reg.set_weight("a", None).unwrap();
    assert_eq!(weights(&reg), [None, Some(2.0)]);
    let g1 = reg.generation();
    reg.set_weight("a", None).unwrap();
    assert_eq!(reg.generation(), g1, "no change, no new snapshot");
    reg.unload("b").unwrap();
    reg.unload("a").unwrap();
    assert!(reg.list().is_empty());
    assert!(reg.unload("a").is_err());
    // An adapter for another shape is refused.
    let (_d2, _p2, other) = tiny(spec(GgmlDType::Q8_0, 128, 3), 1);
    assert!(reg.insert("wide", random_adapter(&other, 4, 1)).is_err());
}

#[test]
fn a_lora_set_and_a_steering_set_run_together_and_swap() {
    use tailor::adapters::{LoraSet, SteeringMeta, SteeringVector};
    use tailor::{Hooks, LoraHook, SteeringHook, SteeringSet};
    let (_d, _p, engine) = tiny(spec(GgmlDType::Q8_0, 64, rand::random()), 2);
    let n = engine.model_config().n_layers;
    let d = engine.model_config().d_model;
    let vec_of = |seed: f32| {
        let mut v = SteeringVector::new(d, SteeringMeta::default()).unwrap();
        for l in 0..n {
            v.insert(l, (0..d).map(|i| ((i as f32 + seed) * 0.7).sin()).collect()).unwrap();
        }
        v
    };
    let reg = AdapterRegistry::new(&engine);
    let lora = random_adapter(&engine, 4, 5);
    reg.insert("a", lora.clone()).unwrap();
    reg.insert_steering("calm", vec_of(1.0)).unwrap();
    reg.insert_steering("warm", vec_of(2.0)).unwrap();
    reg.activate(&[("a", 0.8)]).unwrap();
    reg.activate_steering(&[("calm", 2.0, 0..=n - 1), ("warm", -1.0, 1..=1)]).unwrap();
    let tokens: Vec<u32> = (0..10).map(|i| (i * 13 + 2) % 260).collect();
    let mut followed = engine.new_session();
    followed.follow(reg.clone());
    let prompt = Prompt::Tokens(tokens.clone());
    let via_registry = followed.generate(&prompt, &greedy(12), &mut |_| Flow::Continue).unwrap().token_ids;
    // The same hooks built by hand give the same tokens.
    let steer = SteeringSet::new(vec![
        SteeringHook::new(Arc::new(vec_of(1.0)), 2.0, 0..=n - 1),
        SteeringHook::new(Arc::new(vec_of(2.0)), -1.0, 1..=1),
    ]);
    let mut manual = engine.new_session();
    manual.set_hooks(Hooks {
        linear: Some(Arc::new(LoraHook::from_set(&engine, &LoraSet::new().with(Arc::new(lora), 0.8)).unwrap())),
        residual: Some(Arc::new(steer)),
    });
    assert_eq!(manual.generate(&prompt, &greedy(12), &mut |_| Flow::Continue).unwrap().token_ids, via_registry);
    // Steering scale 0 and no adapter is the base, bit for bit.
    reg.activate(&[]).unwrap();
    reg.activate_steering(&[("calm", 0.0, 0..=n - 1)]).unwrap();
    let mut s = engine.new_session();
    s.follow(reg.clone());
    let base = engine.new_session().generate(&prompt, &greedy(12), &mut |_| Flow::Continue).unwrap().token_ids;
    assert_eq!(s.generate(&prompt, &greedy(12), &mut |_| Flow::Continue).unwrap().token_ids, base);
    // Errors change nothing.
    let g = reg.generation();
    assert!(reg.activate_steering(&[("missing", 1.0, 0..=0)]).is_err());
    assert!(reg.activate_steering(&[("calm", f32::INFINITY, 0..=0)]).is_err());
    assert!(reg.activate_steering(&[("calm", 1.0, 0..=n)]).is_err());
    assert!(reg.insert_steering("narrow", SteeringVector::new(d + 1, SteeringMeta::default()).unwrap()).is_err());
    assert_eq!(reg.generation(), g);
    reg.unload_steering("calm").unwrap();
    assert_eq!(reg.list_steering(), vec![("warm".to_string(), None)]);
}
