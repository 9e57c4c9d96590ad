//! `tailor memory add|search|forget|list|export|import`, and the profile a chat uses.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use tailor::profile::{BertEmbedder, MemoryConfig, MemoryStore, NewMemory, SearchQuery};

use crate::model_cache;

/// Which profile (the user's SQLite file of memories and feedback).
#[derive(Args, Clone, Default)]
pub(crate) struct ProfileArgs {
    /// The profile file (default: `profile.db` in the user's data directory, e.g.
    /// ~/.local/share/tailor/).
    #[arg(long, value_name = "PATH")]
    pub(crate) profile: Option<PathBuf>,
}

impl ProfileArgs {
    pub(crate) fn path(&self) -> Result<PathBuf> {
        match &self.profile {
            Some(p) => Ok(p.clone()),
            None => Ok(dirs::data_dir().context("no data directory on this platform: pass --profile")?.join("tailor").join("profile.db")),
        }
    }

    /// Opens (creating if needed) the profile with the fetched MiniLM embedder.
    pub(crate) fn open(&self) -> Result<MemoryStore> {
        let path = self.path()?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let emb_dir = model_cache()?.embedder_dir();
        if !emb_dir.exists() {
            bail!("no embedder at {} — run `tailor models fetch` first", emb_dir.display());
        }
        let embedder = Arc::new(BertEmbedder::load(&emb_dir).with_context(|| format!("loading the embedder at {}", emb_dir.display()))?);
        MemoryStore::open(&path, embedder, MemoryConfig::default()).with_context(|| format!("opening the profile {}", path.display()))
    }
}

#[derive(Subcommand)]
pub(crate) enum MemoryCommand {
    /// Remember TEXT (a near-duplicate of a stored memory updates it instead).
    Add {
        /// What to remember.
        text: String,
        /// Metadata, a JSON object.
        #[arg(long)]
        metadata: Option<String>,
        /// Importance in [0, 1].
        #[arg(long)]
        importance: Option<f32>,
        #[command(flatten)]
        profile: ProfileArgs,
    },
    /// Find the memories most relevant to QUERY (hybrid vector + full-text search).
    Search {
        /// The query.
        query: String,
        /// At most this many results.
        #[arg(long, default_value_t = 5)]
        limit: usize,
        /// Print JSON: [{"id", "text", "score"}, ...].
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        profile: ProfileArgs,
    },
    /// Forget memory ID (its text, history, embedding and index entry), or --all.
    Forget {
        /// The memory id.
        id: Option<i64>,
        /// Forget every memory.
        #[arg(long, conflicts_with = "id")]
        all: bool,
        #[command(flatten)]
        profile: ProfileArgs,
    },
    /// List memories in id order.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        profile: ProfileArgs,
    },
    /// Write the whole profile (memories, feedback, adapter lineage) as JSON: the user's copy.
    Export {
        /// The file (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        profile: ProfileArgs,
    },
    /// Add everything from an export file.
    Import {
        /// The export file.
        file: PathBuf,
        #[command(flatten)]
        profile: ProfileArgs,
    },
}

pub(crate) fn run(command: MemoryCommand) -> Result<()> {
    match command {
        MemoryCommand::Add { text, metadata, importance, profile } => {
            let mut store = profile.open()?;
            let mut m = NewMemory::new(text);
            if let Some(md) = metadata {
                m = m.metadata_json(&md)?;
            }
            if let Some(i) = importance {
                m = m.importance(i);
            }
            let out = store.add(m)?;
            println!("{}", serde_json::json!({ "id": out.id, "action": format!("{:?}", out.action).to_lowercase() }));
        }
        MemoryCommand::Search { query, limit, json, profile } => {
            let mut store = profile.open()?;
            let hits = store.search(&SearchQuery::new(query, limit))?;
            if json {
                let v: Vec<_> = hits.iter().map(|h| serde_json::json!({ "id": h.memory.id, "text": h.memory.text, "score": h.score })).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for h in hits {
                    println!("{:>6}  {:.4}  {}", h.memory.id, h.score, h.memory.text);
                }
            }
        }
        MemoryCommand::Forget { id, all, profile } => {
            let mut store = profile.open()?;
            match (id, all) {
                (Some(id), false) => {
                    store.forget(id)?;
                    eprintln!("forgot memory {id}");
                }
                (None, true) => eprintln!("forgot {} memories", store.forget_all()?),
                _ => bail!("give a memory id or --all"),
            }
        }
        MemoryCommand::List { json, limit, profile } => {
            let store = profile.open()?;
            let page = store.list(None, limit)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&page.memories)?);
            } else {
                for m in page.memories {
                    println!("{:>6}  {}", m.id, m.text);
                }
            }
        }
        MemoryCommand::Export { out, profile } => {
            let store = profile.open()?;
            let json = store.export_json()?;
            match out {
                Some(p) => std::fs::write(&p, json).with_context(|| format!("writing {}", p.display()))?,
                None => println!("{json}"),
            }
        }
        MemoryCommand::Import { file, profile } => {
            let mut store = profile.open()?;
            let json = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let r = store.import_json(&json)?;
            eprintln!("imported {} memories, {} feedback events, {} adapter versions", r.memories, r.feedback, r.adapters);
        }
    }
    Ok(())
}

#[derive(Subcommand)]
pub(crate) enum FeedbackCommand {
    /// Record feedback on an answer: one of --thumbs up|down, --correction TEXT, or --chosen
    /// TEXT --rejected TEXT.
    Add {
        /// The user's prompt.
        #[arg(long)]
        prompt: String,
        /// The model's answer.
        #[arg(long)]
        answer: String,
        /// `up` or `down`.
        #[arg(long, value_name = "up|down")]
        thumbs: Option<String>,
        /// The answer as it should have been.
        #[arg(long)]
        correction: Option<String>,
        /// The preferred answer (with --rejected).
        #[arg(long, requires = "rejected")]
        chosen: Option<String>,
        /// The dispreferred answer (with --chosen).
        #[arg(long, requires = "chosen")]
        rejected: Option<String>,
        #[command(flatten)]
        profile: ProfileArgs,
    },
    /// List feedback events as JSON.
    List {
        /// Only those no adapter has learned from yet.
        #[arg(long)]
        unconsumed: bool,
        #[command(flatten)]
        profile: ProfileArgs,
    },
    /// Forget feedback events (or --all): deleted from the profile, and every adapter version
    /// that learned from them is marked so it is not used again.
    Forget {
        /// Event ids.
        ids: Vec<i64>,
        /// Every event.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        #[command(flatten)]
        profile: ProfileArgs,
    },
}

pub(crate) fn run_feedback(command: FeedbackCommand) -> Result<()> {
    use tailor::profile::{FeedbackKind, FeedbackQuery, NewFeedback};
    match command {
        FeedbackCommand::Add { prompt, answer, thumbs, correction, chosen, rejected, profile } => {
            let kind = match (thumbs.as_deref(), correction, chosen, rejected) {
                (Some("up"), None, None, None) => FeedbackKind::ThumbsUp,
                (Some("down"), None, None, None) => FeedbackKind::ThumbsDown,
                (Some(t), None, None, None) => bail!("--thumbs {t}: use up or down"),
                (None, Some(c), None, None) => FeedbackKind::Correction { corrected: c },
                (None, None, Some(chosen), Some(rejected)) => FeedbackKind::Preference { chosen, rejected },
                _ => bail!("give exactly one of --thumbs, --correction, or --chosen with --rejected"),
            };
            let added = profile.open()?.add_feedback_mirrored(NewFeedback::new(prompt, answer, kind))?;
            let mut v = serde_json::json!({ "id": added.id });
            // A correction is also a memory, in the prompt of the next relevant question.
            if let Some(m) = added.memory {
                v["memory"] = serde_json::json!({ "id": m.id, "action": format!("{:?}", m.action).to_lowercase() });
                eprintln!("[memory #{}]", m.id);
            }
            println!("{v}");
        }
        FeedbackCommand::List { unconsumed, profile } => {
            let store = profile.open()?;
            let mut q = FeedbackQuery::default();
            q.unconsumed_only = unconsumed;
            q.limit = 1_000_000;
            println!("{}", serde_json::to_string_pretty(&store.list_feedback(&q)?)?);
        }
        FeedbackCommand::Forget { ids, all, profile } => {
            let mut store = profile.open()?;
            let tainted = match (all, ids.is_empty()) {
                (true, _) => store.forget_all_feedback()?,
                (false, false) => store.forget_feedback(&ids)?,
                (false, true) => bail!("give event ids or --all"),
            };
            if !tainted.is_empty() {
                eprintln!("adapter versions that learned from it, no longer used: {}", tainted.join(", "));
            }
            let purged = crate::train_cmd::purge_tainted(&profile.path()?, &store)?;
            if !purged.is_empty() {
                eprintln!("deleted adapter versions: {}", purged.join(", "));
            }
            eprintln!("forgotten");
        }
    }
    Ok(())
}
