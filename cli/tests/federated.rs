//! `tailor federated` end to end on small adapters the test writes, and the accountant
//! against Google's `dp-accounting` (PyPI, pinned, in a venv this test makes under target/).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use tailor::adapters::{peft, LoraAdapter, LoraConfig, LoraWeights, Target};

fn tailor(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tailor")).args(args).output().unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tailor-fed-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A rank-`r` adapter on q and v of 2 layers (in 6; out 6 and 2), values from `seed`.
fn adapter(r: usize, seed: u32) -> LoraAdapter {
    let mut a = LoraAdapter::new(LoraConfig::new(r, 2.0 * r as f64, &[Target::Q, Target::V])).unwrap();
    let wave = |n: usize, k: u32| (0..n).map(|i| (((i as u32 + 1) * 7919 * (k + 3)) % 17) as f32 / 8.0 - 1.0).collect::<Vec<f32>>();
    for l in 0..2 {
        for (t, o) in [(Target::Q, 6), (Target::V, 2)] {
            a.insert(l, t, LoraWeights::new(r, 6, o, wave(r * 6, seed + l as u32), wave(o * r, seed * 5 + 1)).unwrap()).unwrap();
        }
    }
    a
}

fn dense(a: &LoraAdapter, l: usize, t: Target) -> Vec<f64> {
    let w = a.get(l, t).unwrap();
    let (r, i, o) = (w.r(), w.in_features(), w.out_features());
    let mut d = vec![0f64; o * i];
    for oo in 0..o {
        for k in 0..r {
            for ii in 0..i {
                d[oo * i + ii] += a.scale() as f64 * w.b()[oo * r + k] as f64 * w.a()[k * i + ii] as f64;
            }
        }
    }
    d
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with('.')).collect()
}

#[test]
fn federated_aggregate_writes_the_exact_sum_and_refuses_bad_updates() {
    let dir = tmp("agg");
    let (a, b) = (adapter(2, 1), adapter(1, 2));
    peft::save(&a, &dir.join("alice")).unwrap();
    peft::save(&b, &dir.join("bob")).unwrap();
    let mut nan = adapter(2, 3);
    nan.get_mut(1, Target::V).unwrap().b_mut()[0] = f32::NAN;
    peft::save(&nan, &dir.join("mallory")).unwrap();
    let d = |n: &str| dir.join(n).display().to_string();
    let out = dir.join("global");
    let out_s = out.display().to_string();
    let o = tailor(&["federated", "aggregate", "--out", &out_s, &format!("{}:30", d("alice")), &format!("{}:10", d("bob")), &d("mallory")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["accepted"], serde_json::json!(["alice", "bob"]));
    assert_eq!(v["refused"][0]["client"], "mallory");
    assert!(v["refused"][0]["reason"].as_str().unwrap().contains("NaN"), "{v}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("client `mallory` refused"));
    assert_eq!(v["report"]["rank"], 3);
    let g = peft::load(&out, &peft::LoadOptions::new()).unwrap();
    for l in 0..2 {
        for t in [Target::Q, Target::V] {
            let want: Vec<f64> = dense(&a, l, t).iter().zip(dense(&b, l, t)).map(|(x, y)| 0.75 * x + 0.25 * y).collect();
            let n = want.iter().map(|x| x * x).sum::<f64>().sqrt();
            let err = dense(&g, l, t).iter().zip(&want).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
            assert!(err < 1e-6 * n, "{l} {t}: {err}");
        }
    }
    // FedIT at the clients' rank, with noise refused for it; noise with exact, seeded.
    let o = tailor(&["federated", "aggregate", "--out", &d("fedit"), "--method", "fedit", &d("alice"), &d("bob")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["report"]["relative_error_vs_exact"].as_f64().unwrap() > 1e-3);
    let noisy = |name: &str| {
        let o = tailor(&["federated", "aggregate", "--out", &d(name), "--clip", "1", "--noise-multiplier", "0.5", "--seed", "4", &d("alice"), &d("bob")]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read(dir.join(name).join(peft::WEIGHTS_FILE)).unwrap()
    };
    assert_eq!(noisy("n1"), noisy("n2"), "same seed, same noise");

    // Errors write nothing: no update left, options that do not apply.
    for (args, needle) in [
        (vec!["federated", "aggregate", "--out", &out_s, &d("mallory")], "nothing to aggregate"),
        (vec!["federated", "aggregate", "--out", &out_s, "--method", "fedit", "--rank", "5", &d("alice")], "rank"),
        (vec!["federated", "aggregate", "--out", &out_s, "--noise-multiplier", "1", &d("alice")], "clip"),
        (vec!["federated", "aggregate", "--out", &out_s, &format!("{}:0.5", d("alice"))], "sample count"),
    ] {
        std::fs::remove_dir_all(&out).ok();
        let o = tailor(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!out.exists(), "{args:?} wrote {}", out.display());
    }
    assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));
    let _ = std::fs::remove_dir_all(dir);
}

/// (σ, q, T, δ) cases compared with dp-accounting.
const CASES: [(f64, f64, u64, f64); 6] = [
    (1.1, 0.01, 1000, 1e-5),
    (0.8, 0.05, 100, 1e-5),
    (2.0, 0.2, 50, 1e-6),
    (1.0, 1.0, 10, 1e-5),
    (4.0, 0.001, 10000, 1e-5),
    (0.6, 0.1, 3, 1e-3),
];

#[test]
fn federated_accountant_matches_dp_accounting() {
    let python = common::venv_python("venv-dp-accounting", "dp-accounting==0.6.0");
    let script = r#"
import json, sys
import dp_accounting as dpa
from dp_accounting.rdp import rdp_privacy_accountant as rdp
out = []
for sigma, q, t, delta in json.loads(sys.argv[1]):
    acc = dpa.rdp.RdpAccountant()  # default orders
    acc.compose(dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(sigma)), int(t)))
    eps, order = acc.get_epsilon_and_optimal_order(delta)
    one = rdp._compute_rdp_poisson_subsampled_gaussian(q, sigma, rdp.DEFAULT_RDP_ORDERS)
    out.append({"eps": float(eps), "order": float(order), "rdp": [float(x) if x != float("inf") else None for x in one], "orders": [float(x) for x in rdp.DEFAULT_RDP_ORDERS]})
print(json.dumps(out))
"#;
    let cases: Vec<[f64; 4]> = CASES.iter().map(|&(s, q, t, d)| [s, q, t as f64, d]).collect();
    let o = Command::new(&python).args(["-c", script, &serde_json::to_string(&cases).unwrap()]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let refs: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    let orders = tailor_federated::accountant::default_orders();
    for (&(sigma, q, t, delta), r) in CASES.iter().zip(&refs) {
        let their_orders: Vec<f64> = serde_json::from_value(r["orders"].clone()).unwrap();
        assert_eq!(their_orders, orders, "the same orders");
        let their_rdp: Vec<f64> = serde_json::from_value::<Vec<Option<f64>>>(r["rdp"].clone()).unwrap().into_iter().map(|x| x.unwrap_or(f64::INFINITY)).collect();
        let ours = tailor_federated::accountant::rdp_subsampled_gaussian(q, sigma, &orders);
        for ((a, x), y) in orders.iter().zip(&ours).zip(&their_rdp) {
            let ok = (x.is_infinite() && y.is_infinite()) || (x - y).abs() <= 1e-6 * y.abs().max(1e-300);
            assert!(ok, "σ {sigma} q {q} order {a}: ours {x}, dp_accounting {y}");
        }
        let (eps, order) = tailor_federated::accountant::epsilon(sigma, q, t, delta).unwrap();
        let want = r["eps"].as_f64().unwrap();
        assert!((eps - want).abs() <= 1e-6 * want, "σ {sigma} q {q} T {t} δ {delta}: ε {eps} vs {want}");
        assert_eq!(order, r["order"].as_f64().unwrap());
        // The CLI prints the same.
        let o = tailor(&["federated", "accountant", "--noise-multiplier", &sigma.to_string(), "--sample-rate", &q.to_string(), "--rounds", &t.to_string(), "--delta", &delta.to_string(), "--json"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert!((v["epsilon"].as_f64().unwrap() - want).abs() <= 1e-6 * want);
        eprintln!("σ {sigma} q {q} T {t} δ {delta}: ε {eps:.6} (dp_accounting {want:.6}), order {order}");
    }
    let o = tailor(&["federated", "accountant", "--noise-multiplier=-1", "--sample-rate", "0.1", "--rounds", "1"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("noise multiplier"));
}
