//! `tailor adapter list|inspect|merge|export` and `tailor steer apply`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use tailor::adapters::peft::{self, LoadOptions};
use tailor::adapters::{gguf_lora, merge, LoraAdapter, MergeMethod, MergeOptions};
use tailor::{Flow, Prompt};

use crate::{load_steering, model_cache, path_and_weight, GenArgs, ModelArgs};

#[derive(Subcommand)]
pub(crate) enum AdapterCommand {
    /// Make the profile's previous adapter version active (or the base model when there is
    /// none); versions stay on disk.
    Rollback {
        #[command(flatten)]
        profile: crate::memory_cmd::ProfileArgs,
    },
    /// List the adapters in a directory (default: $TAILOR_HOME/adapters): every subdirectory
    /// holding an adapter_config.json, with its rank, targets and size.
    List {
        /// The directory.
        dir: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print an adapter's configuration and what it adapts, as JSON (a PEFT directory, or a
    /// llama.cpp LoRA `.gguf` with --model's q/k layout).
    Inspect {
        /// The adapter directory or `.gguf` file.
        path: PathBuf,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Merge adapters PATH[:WEIGHT]... into one of rank --rank, saved in PEFT's layout (or as
    /// a llama.cpp LoRA GGUF when --out ends in `.gguf`).
    Merge {
        /// The adapters, each optionally weighted (default 1).
        #[arg(required = true, value_name = "PATH[:WEIGHT]")]
        inputs: Vec<String>,
        /// Where to save the result.
        #[arg(long)]
        out: PathBuf,
        /// Rank of the result (default: the largest input rank).
        #[arg(long)]
        rank: Option<usize>,
        /// `linear` (weighted sum), `ties` or `dare`.
        #[arg(long, default_value = "linear")]
        method: String,
        /// For ties/dare: the fraction of each delta's entries kept.
        #[arg(long, default_value_t = 0.5)]
        density: f32,
        /// For dare: the seed of the random drop.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Export a PEFT adapter as a llama.cpp LoRA GGUF (for `llama-cli --lora`), for --model's
    /// base (its architecture and q/k row order).
    Export {
        /// The adapter directory.
        path: PathBuf,
        /// The `.gguf` file to write.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        model: ModelArgs,
    },
}

/// Loads a PEFT directory or a llama.cpp LoRA GGUF; `engine` (when given) checks shapes and
/// fingerprint and tells the GGUF's q/k layout.
fn load_adapter(path: &Path, engine: Option<&tailor::Engine>) -> Result<LoraAdapter> {
    let a = if path.extension().is_some_and(|e| e == "gguf") {
        let engine = engine.context("reading a GGUF adapter needs its base model")?;
        gguf_lora::import(path, engine.qk_layout())?
    } else {
        let mut opts = LoadOptions::new();
        if let Some(e) = engine {
            opts = opts.with_shapes(e.base_shapes()).with_fingerprint(e.base_fingerprint());
        }
        peft::load(path, &opts)?
    };
    Ok(a)
}

fn summary(a: &LoraAdapter) -> serde_json::Value {
    let mut targets: Vec<String> = a.iter().map(|((_, t), _)| t.to_string()).collect();
    targets.sort();
    targets.dedup();
    let layers: std::collections::BTreeSet<usize> = a.iter().map(|((l, _), _)| l).collect();
    serde_json::json!({
        "rank": a.config().r,
        "alpha": a.config().lora_alpha,
        "rslora": a.config().use_rslora,
        "scale": a.scale(),
        "modules": a.len(),
        "parameters": a.num_parameters(),
        "targets": targets,
        "layers": layers,
        "base_fingerprint": a.config().base_fingerprint().map(|f| f.as_str().to_owned()),
    })
}

pub(crate) fn run(command: AdapterCommand) -> Result<()> {
    match command {
        AdapterCommand::Rollback { profile } => crate::train_cmd::rollback(profile),
        AdapterCommand::List { dir, json } => {
            let dir = match dir {
                Some(d) => d,
                None => model_cache()?.root().join("adapters"),
            };
            let mut rows = Vec::new();
            if dir.is_dir() {
                let mut entries: Vec<_> = std::fs::read_dir(&dir)
                    .with_context(|| format!("reading {}", dir.display()))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.join(peft::CONFIG_FILE).is_file())
                    .collect();
                entries.sort();
                for p in entries {
                    let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    let mut row = match peft::load(&p, &LoadOptions::new()) {
                        Ok(a) => summary(&a),
                        Err(e) => serde_json::json!({ "error": e.to_string() }),
                    };
                    row["name"] = name.into();
                    row["path"] = p.display().to_string().into();
                    rows.push(row);
                }
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else if rows.is_empty() {
                eprintln!("no adapters in {}", dir.display());
            } else {
                for r in &rows {
                    match r.get("error") {
                        Some(e) => println!("{:<24} error: {}", r["name"].as_str().unwrap_or(""), e.as_str().unwrap_or("")),
                        None => println!(
                            "{:<24} rank {:<3} {:>9} params  {}",
                            r["name"].as_str().unwrap_or(""),
                            r["rank"],
                            r["parameters"],
                            r["targets"].as_array().map(|t| t.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(",")).unwrap_or_default()
                        ),
                    }
                }
            }
            Ok(())
        }
        AdapterCommand::Inspect { path, model } => {
            let engine = if path.extension().is_some_and(|e| e == "gguf") { Some(model.load()?) } else { None };
            let a = load_adapter(&path, engine.as_ref()).with_context(|| format!("loading {}", path.display()))?;
            let mut v = summary(&a);
            v["config"] = serde_json::from_str::<serde_json::Value>(&a.config().to_json())?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
        AdapterCommand::Merge { inputs, out, rank, method, density, seed, model } => {
            let engine = model.load()?;
            let mut loaded = Vec::new();
            for spec in &inputs {
                let (p, w) = path_and_weight(spec)?;
                let a = load_adapter(&p, Some(&engine)).with_context(|| format!("loading {}", p.display()))?;
                loaded.push((a, w));
            }
            let method = match method.as_str() {
                "linear" => MergeMethod::Linear,
                "ties" => MergeMethod::Ties { density },
                "dare" => MergeMethod::Dare { density, seed },
                m => bail!("--method {m}: use linear, ties or dare"),
            };
            let refs: Vec<(&LoraAdapter, f32)> = loaded.iter().map(|(a, w)| (a, *w)).collect();
            let mut merged = merge(&refs, &MergeOptions::linear(rank).with_method(method))?;
            merged.set_base_fingerprint(engine.base_fingerprint());
            save(&merged, &out, &engine)?;
            eprintln!("merged {} adapters into rank {} ({} parameters) at {}", inputs.len(), merged.config().r, merged.num_parameters(), out.display());
            Ok(())
        }
        AdapterCommand::Export { path, out, model } => {
            let engine = model.load()?;
            let a = load_adapter(&path, Some(&engine)).with_context(|| format!("loading {}", path.display()))?;
            if out.extension().is_none_or(|e| e != "gguf") {
                bail!("--out must be a .gguf file");
            }
            save(&a, &out, &engine)?;
            eprintln!("exported {} to {} (llama.cpp: llama-cli -m BASE.gguf --lora {})", path.display(), out.display(), out.display());
            Ok(())
        }
    }
}

fn save(a: &LoraAdapter, out: &Path, engine: &tailor::Engine) -> Result<()> {
    if out.extension().is_some_and(|e| e == "gguf") {
        gguf_lora::export(a, out, &engine.model_config().architecture, engine.qk_layout())?;
    } else {
        peft::save(a, out)?;
    }
    Ok(())
}

/// `tailor steer apply`: the same prompt generated at several steering scales.
pub(crate) fn steer_apply(vector: &Path, prompt: &str, scales: &[f32], gen: &GenArgs, model: &ModelArgs) -> Result<()> {
    let engine = model.load()?;
    let v = std::sync::Arc::new(load_steering(&engine, vector).with_context(|| format!("loading {}", vector.display()))?);
    let layers = model.steer_layer_range(&engine)?;
    let params = gen.params(None)?;
    for &scale in scales {
        let mut session = engine.new_session();
        session.set_hooks(tailor::SteeringHook::new(v.clone(), scale, layers.clone()).into_hooks());
        let g = session.generate(&Prompt::Chat(vec![tailor::ChatMessage::user(prompt)]), &params, &mut |_| Flow::Continue)?;
        println!("=== scale {scale} ===\n{}\n", g.text.trim());
    }
    Ok(())
}
