//! What each MCP tool and resource does, as plain blocking functions over one open profile
//! ([`PersonalModel`]): argument checks, the store calls, the personal model's answer. The
//! protocol side (`super`) only moves JSON in and out and runs these off the async threads.
//!
//! Every failure is a [`ToolError`] whose message is meant for the assistant that called the
//! tool (it comes back as an MCP tool result with `isError: true`).

use std::sync::{Arc, Mutex};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tailor::profile::{AddAction, FeedbackKind, Memory, NewFeedback, NewMemory, SearchQuery};
use tailor::{ChatMessage, Flow, GenerateParams, Prompt, Session, SessionConfig};
use tailor_trainer::{personal, PersonalModel};

/// A tool failure, worded for the caller.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ToolError(pub(crate) String);

impl std::fmt::Display for ToolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<tailor::profile::Error> for ToolError {
    fn from(e: tailor::profile::Error) -> Self {
        ToolError(e.to_string())
    }
}

impl From<tailor::Error> for ToolError {
    fn from(e: tailor::Error) -> Self {
        ToolError(e.to_string())
    }
}

impl From<personal::Error> for ToolError {
    fn from(e: personal::Error) -> Self {
        ToolError(e.to_string())
    }
}

fn invalid(msg: impl Into<String>) -> ToolError {
    ToolError(msg.into())
}

/// Result of a tool.
pub(crate) type ToolResult<T> = Result<T, ToolError>;

/// The most results `recall` returns.
pub(crate) const MAX_RECALL: usize = 50;
/// The most new tokens `ask_personal_model` generates.
pub(crate) const MAX_ANSWER_TOKENS: usize = 1024;
/// New tokens `ask_personal_model` generates when the caller does not say.
pub(crate) const DEFAULT_ANSWER_TOKENS: usize = 256;
/// The URI scheme of the memory resources: `memory://<id>` each, and [`MEMORY_LIST_URI`].
pub(crate) const MEMORY_SCHEME: &str = "memory://";
/// The resource listing every memory (JSON).
pub(crate) const MEMORY_LIST_URI: &str = "memory://all";

// ---------------------------------------------------------------------------------------------
// Arguments and results (their JSON schemas are what `tools/list` shows).

/// `remember`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RememberArgs {
    /// What to remember about the user, one fact per call, in the user's words (e.g. "My dog
    /// is called Biscuit."). A near-duplicate of a stored memory updates it instead.
    pub(crate) text: String,
    /// How much the fact matters, 0 to 1 (default 0.5); weighs in recall.
    #[serde(default)]
    pub(crate) importance: Option<f32>,
    /// Free-form JSON object stored with it (source, tags, ...).
    #[serde(default)]
    pub(crate) metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// What `remember` did.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct Remembered {
    /// The memory now holding the text.
    pub(crate) id: i64,
    /// `inserted` (new memory), `updated` (a near-duplicate was updated, its old text kept in
    /// history) or `unchanged` (the very same text was there).
    pub(crate) action: String,
    /// Cosine similarity to the near-duplicate, when one was updated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) similarity: Option<f32>,
}

/// `recall`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RecallArgs {
    /// What to look for (a question or keywords).
    pub(crate) query: String,
    /// At most this many memories (default 5, at most 50).
    #[serde(default)]
    pub(crate) limit: Option<u32>,
}

impl RecallArgs {
    /// The checked limit.
    pub(crate) fn limit(&self) -> ToolResult<usize> {
        match self.limit {
            None => Ok(5),
            Some(0) => Err(invalid("limit must be at least 1")),
            Some(n) if n as usize > MAX_RECALL => Err(invalid(format!("limit must be at most {MAX_RECALL}"))),
            Some(n) => Ok(n as usize),
        }
    }
}

/// One recalled memory.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct RecalledMemory {
    /// Its id (for `forget`, and the resource `memory://<id>`).
    pub(crate) id: i64,
    /// Its text.
    pub(crate) text: String,
    /// Ranking score (higher is better; fused vector + full-text rank).
    pub(crate) score: f32,
    /// Cosine similarity between the query and the memory, -1 to 1.
    pub(crate) similarity: f32,
}

/// What `recall` found, best first.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct Recalled {
    /// The memories, best first.
    pub(crate) memories: Vec<RecalledMemory>,
}

/// `forget`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ForgetArgs {
    /// The memory to forget (from `remember` or `recall`).
    #[serde(default)]
    pub(crate) id: Option<i64>,
    /// Forget every memory instead; needs `confirm: true`.
    #[serde(default)]
    pub(crate) all: Option<bool>,
    /// Must be true with `all` (the user asked to forget everything).
    #[serde(default)]
    pub(crate) confirm: Option<bool>,
}

/// What `forget` is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ForgetTarget {
    /// One memory.
    One(i64),
    /// Every memory.
    All,
}

impl ForgetArgs {
    /// The checked request: an id, or `all` with `confirm`.
    pub(crate) fn target(&self) -> ToolResult<ForgetTarget> {
        match (self.id, self.all.unwrap_or(false), self.confirm.unwrap_or(false)) {
            (Some(_), true, _) => Err(invalid("give either id or all, not both")),
            (Some(id), false, _) => Ok(ForgetTarget::One(id)),
            (None, true, true) => Ok(ForgetTarget::All),
            (None, true, false) => Err(invalid("forgetting every memory needs confirm: true (ask the user first)")),
            (None, false, _) => Err(invalid("give the id of the memory to forget, or all: true with confirm: true")),
        }
    }
}

/// What `forget` did.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct Forgotten {
    /// How many memories were forgotten (text, history, embedding and index entry).
    pub(crate) forgotten: usize,
}

/// `give_feedback`: exactly one of `thumbs`, `correction`, or `chosen` with `rejected`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct FeedbackArgs {
    /// The user's prompt.
    pub(crate) prompt: String,
    /// The answer the feedback is about.
    pub(crate) answer: String,
    /// `up` (a good answer) or `down` (a bad one).
    #[serde(default)]
    pub(crate) thumbs: Option<Thumbs>,
    /// The answer as it should have been.
    #[serde(default)]
    pub(crate) correction: Option<String>,
    /// The preferred answer (with `rejected`).
    #[serde(default)]
    pub(crate) chosen: Option<String>,
    /// The dispreferred answer (with `chosen`).
    #[serde(default)]
    pub(crate) rejected: Option<String>,
}

/// Thumbs up or down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Thumbs {
    /// A good answer.
    Up,
    /// A bad answer.
    Down,
}

impl FeedbackArgs {
    /// The checked feedback kind.
    pub(crate) fn kind(&self) -> ToolResult<FeedbackKind> {
        let nonempty = |name: &str, s: &Option<String>| -> ToolResult<()> {
            match s {
                Some(t) if t.trim().is_empty() => Err(invalid(format!("{name} is empty"))),
                _ => Ok(()),
            }
        };
        nonempty("correction", &self.correction)?;
        nonempty("chosen", &self.chosen)?;
        nonempty("rejected", &self.rejected)?;
        match (self.thumbs, &self.correction, &self.chosen, &self.rejected) {
            (Some(Thumbs::Up), None, None, None) => Ok(FeedbackKind::ThumbsUp),
            (Some(Thumbs::Down), None, None, None) => Ok(FeedbackKind::ThumbsDown),
            (None, Some(c), None, None) => Ok(FeedbackKind::Correction { corrected: c.clone() }),
            (None, None, Some(c), Some(r)) => Ok(FeedbackKind::Preference { chosen: c.clone(), rejected: r.clone() }),
            (None, None, Some(_), None) | (None, None, None, Some(_)) => Err(invalid("chosen and rejected go together")),
            _ => Err(invalid("give exactly one of thumbs (up|down), correction, or chosen with rejected")),
        }
    }
}

/// What `give_feedback` stored.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct FeedbackRecorded {
    /// The feedback event's id.
    pub(crate) id: i64,
    /// A correction is also stored as a memory (`Q: <prompt> A: <correction>`, in the prompt
    /// of the next relevant question): its id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) memory_id: Option<i64>,
    /// Background training of the personal model.
    pub(crate) training: TrainingStarted,
}

/// Whether a feedback event started training.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct TrainingStarted {
    /// True when this event started a training run in the background (enough new feedback
    /// had come in); a version it promotes answers from the next question.
    pub(crate) started: bool,
}

/// `ask_personal_model`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AskArgs {
    /// The question or instruction for the user's personal model.
    pub(crate) question: String,
    /// At most this many new tokens (default 256, at most 1024).
    #[serde(default)]
    pub(crate) max_tokens: Option<u32>,
    /// Give the model the user's memories relevant to the question (default true); false
    /// asks the personal adapter alone.
    #[serde(default)]
    pub(crate) use_memory: Option<bool>,
    /// Constrain the answer to this JSON Schema: the answer is then JSON text that parses
    /// and validates (grammar-constrained decoding).
    #[serde(default)]
    pub(crate) json_schema: Option<serde_json::Value>,
}

impl AskArgs {
    /// The checked token limit.
    pub(crate) fn max_tokens(&self) -> ToolResult<usize> {
        match self.max_tokens {
            None => Ok(DEFAULT_ANSWER_TOKENS),
            Some(0) => Err(invalid("max_tokens must be at least 1")),
            Some(n) if n as usize > MAX_ANSWER_TOKENS => Err(invalid(format!("max_tokens must be at most {MAX_ANSWER_TOKENS}"))),
            Some(n) => Ok(n as usize),
        }
    }
}

/// A memory the personal model was given.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct UsedMemory {
    /// Its id.
    pub(crate) id: i64,
    /// Its text.
    pub(crate) text: String,
    /// Its retrieval score.
    pub(crate) score: f32,
}

/// The personal model's answer.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct Answer {
    /// The answer.
    pub(crate) answer: String,
    /// The memories that were put in the prompt, best first.
    pub(crate) memories_used: Vec<UsedMemory>,
    /// The profile's adapter version that answered (`null`: the base model alone).
    pub(crate) adapter_version: Option<String>,
    /// Why it stopped: `stop`, `length`, `context_full` or `cancelled`.
    pub(crate) finish_reason: String,
    /// New tokens generated.
    pub(crate) tokens: usize,
}

fn nonempty_text<'a>(name: &str, s: &'a str) -> ToolResult<&'a str> {
    if s.trim().is_empty() {
        Err(invalid(format!("{name} is empty")))
    } else {
        Ok(s)
    }
}

/// The memory id a `memory://<id>` URI names.
pub(crate) fn parse_memory_uri(uri: &str) -> ToolResult<i64> {
    let rest = uri.strip_prefix(MEMORY_SCHEME).ok_or_else(|| invalid(format!("unknown resource {uri}: memories are memory://<id>")))?;
    rest.parse::<i64>().ok().filter(|&id| id > 0).ok_or_else(|| invalid(format!("unknown resource {uri}: memories are memory://<id>")))
}

/// The URI of memory `id`.
pub(crate) fn memory_uri(id: i64) -> String {
    format!("{MEMORY_SCHEME}{id}")
}

// ---------------------------------------------------------------------------------------------

/// One open profile and the session that answers `ask_personal_model`. `Send + Sync`.
pub(crate) struct Tools {
    pm: Arc<PersonalModel>,
    /// Reused between questions (the shared prompt prefix stays in its KV cache).
    session: Mutex<Session>,
}

impl Tools {
    /// Tools over `pm`; answers get a context window of `ctx` tokens.
    pub(crate) fn new(pm: Arc<PersonalModel>, ctx: usize) -> Self {
        let session = Mutex::new(pm.session_with(SessionConfig::with_context(ctx)));
        Tools { pm, session }
    }

    fn with_store<T>(&self, f: impl FnOnce(&mut tailor::profile::MemoryStore) -> ToolResult<T>) -> ToolResult<T> {
        let mut store = self.pm.store().lock().unwrap_or_else(|e| e.into_inner());
        f(&mut store)
    }

    /// `remember`.
    pub(crate) fn remember(&self, args: RememberArgs) -> ToolResult<Remembered> {
        let text = nonempty_text("text", &args.text)?;
        let mut m = NewMemory::new(text);
        if let Some(i) = args.importance {
            if !(0.0..=1.0).contains(&i) {
                return Err(invalid("importance must be between 0 and 1"));
            }
            m = m.importance(i);
        }
        if let Some(md) = args.metadata {
            m = m.metadata_json(&serde_json::Value::Object(md).to_string())?;
        }
        let out = self.with_store(|s| Ok(s.add(m)?))?;
        let action = match out.action {
            AddAction::Inserted => "inserted",
            AddAction::Updated => "updated",
            AddAction::Unchanged => "unchanged",
        };
        Ok(Remembered { id: out.id, action: action.into(), similarity: out.similarity })
    }

    /// `recall`.
    pub(crate) fn recall(&self, args: RecallArgs) -> ToolResult<Recalled> {
        let limit = args.limit()?;
        let query = nonempty_text("query", &args.query)?;
        let hits = self.with_store(|s| Ok(s.search(&SearchQuery::new(query, limit))?))?;
        let memories = hits.into_iter().map(|h| RecalledMemory { id: h.memory.id, text: h.memory.text, score: h.score, similarity: h.similarity }).collect();
        Ok(Recalled { memories })
    }

    /// `forget`.
    pub(crate) fn forget(&self, args: ForgetArgs) -> ToolResult<Forgotten> {
        let target = args.target()?;
        self.with_store(|s| match target {
            ForgetTarget::One(id) => {
                s.forget(id)?;
                Ok(Forgotten { forgotten: 1 })
            }
            ForgetTarget::All => Ok(Forgotten { forgotten: s.forget_all()? }),
        })
    }

    /// `give_feedback`.
    pub(crate) fn give_feedback(&self, args: FeedbackArgs) -> ToolResult<FeedbackRecorded> {
        let kind = args.kind()?;
        let prompt = nonempty_text("prompt", &args.prompt)?;
        let answer = nonempty_text("answer", &args.answer)?;
        let (added, job) = self.pm.add_feedback(NewFeedback::new(prompt, answer, kind))?;
        if job.is_some() {
            eprintln!("tailor mcp: new feedback started a background training run");
        }
        Ok(FeedbackRecorded { id: added.id, memory_id: added.memory.map(|m| m.id), training: TrainingStarted { started: job.is_some() } })
    }

    /// `ask_personal_model`: the profile's active adapter answers, with the memories relevant
    /// to the question in its system prompt (unless `use_memory: false`). `cancelled` is
    /// polled between tokens.
    pub(crate) fn ask(&self, args: AskArgs, cancelled: &dyn Fn() -> bool) -> ToolResult<Answer> {
        let max_tokens = args.max_tokens()?;
        let question = nonempty_text("question", &args.question)?;
        // A version promoted or rolled back by another process (`tailor train`) since the
        // last question is picked up here.
        let version = self.pm.refresh()?;
        let mut params = GenerateParams::default();
        params.max_tokens = max_tokens;
        params.grammar = args.json_schema.map(tailor::Grammar::JsonSchema);
        let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let mut memory = self.pm.memory_prompt();
        memory.enabled &= args.use_memory.unwrap_or(true);
        session.set_memory(Some(self.pm.store().clone()), memory);
        let g = session.generate(&Prompt::Chat(vec![ChatMessage::user(question)]), &params, &mut |_| {
            if cancelled() {
                Flow::Stop
            } else {
                Flow::Continue
            }
        })?;
        let finish_reason = if cancelled() { "cancelled".to_string() } else { serde_json::to_value(g.finish_reason).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default() };
        Ok(Answer {
            answer: g.text.trim().to_string(),
            memories_used: g.memories.into_iter().map(|m| UsedMemory { id: m.id, text: m.text, score: m.score }).collect(),
            adapter_version: version,
            finish_reason,
            tokens: g.token_ids.len(),
        })
    }

    /// A page of memories in id order after `after` (for `resources/list`), and the id to
    /// continue after.
    pub(crate) fn list_memories(&self, after: Option<i64>, limit: usize) -> ToolResult<(Vec<Memory>, Option<i64>)> {
        let page = self.with_store(|s| Ok(s.list(after, limit)?))?;
        Ok((page.memories, page.next_after))
    }

    /// One memory (for `resources/read`); `None` when there is none with this id.
    pub(crate) fn memory(&self, id: i64) -> ToolResult<Option<Memory>> {
        self.with_store(|s| match s.get(id) {
            Ok(m) => Ok(Some(m)),
            Err(tailor::profile::Error::MemoryNotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tailor::profile::testing::HashEmbedder;
    use tailor::profile::{MemoryConfig, MemoryStore};
    use tailor::testing::{TempDir, TinyModel};
    use tailor_trainer::AutoTrain;

    fn args<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn forget_needs_an_id_or_a_confirmed_all() {
        let t = |v| args::<ForgetArgs>(v).target();
        assert_eq!(t(serde_json::json!({"id": 3})), Ok(ForgetTarget::One(3)));
        assert_eq!(t(serde_json::json!({"all": true, "confirm": true})), Ok(ForgetTarget::All));
        assert!(t(serde_json::json!({"all": true})).unwrap_err().0.contains("confirm"));
        assert!(t(serde_json::json!({"all": true, "confirm": false})).unwrap_err().0.contains("confirm"));
        assert!(t(serde_json::json!({"id": 3, "all": true, "confirm": true})).unwrap_err().0.contains("not both"));
        assert!(t(serde_json::json!({})).is_err());
        assert!(t(serde_json::json!({"confirm": true})).is_err());
        assert!(serde_json::from_value::<ForgetArgs>(serde_json::json!({"ids": [1]})).is_err(), "unknown fields are refused");
    }

    #[test]
    fn feedback_takes_exactly_one_kind() {
        let k = |v| args::<FeedbackArgs>(v).kind();
        let base = |extra: serde_json::Value| {
            let mut v = serde_json::json!({"prompt": "p", "answer": "a"});
            v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            v
        };
        assert_eq!(k(base(serde_json::json!({"thumbs": "up"}))), Ok(FeedbackKind::ThumbsUp));
        assert_eq!(k(base(serde_json::json!({"thumbs": "down"}))), Ok(FeedbackKind::ThumbsDown));
        assert_eq!(k(base(serde_json::json!({"correction": "c"}))), Ok(FeedbackKind::Correction { corrected: "c".into() }));
        assert_eq!(
            k(base(serde_json::json!({"chosen": "x", "rejected": "y"}))),
            Ok(FeedbackKind::Preference { chosen: "x".into(), rejected: "y".into() })
        );
        assert!(k(base(serde_json::json!({}))).unwrap_err().0.contains("exactly one"));
        assert!(k(base(serde_json::json!({"thumbs": "up", "correction": "c"}))).unwrap_err().0.contains("exactly one"));
        assert!(k(base(serde_json::json!({"chosen": "x"}))).unwrap_err().0.contains("together"));
        assert!(k(base(serde_json::json!({"rejected": "y"}))).unwrap_err().0.contains("together"));
        assert!(k(base(serde_json::json!({"correction": "  "}))).unwrap_err().0.contains("empty"));
        assert!(serde_json::from_value::<FeedbackArgs>(base(serde_json::json!({"thumbs": "sideways"}))).is_err());
    }

    #[test]
    fn limits_are_checked() {
        let r = |v| args::<RecallArgs>(v).limit();
        assert_eq!(r(serde_json::json!({"query": "q"})), Ok(5));
        assert_eq!(r(serde_json::json!({"query": "q", "limit": 50})), Ok(50));
        assert!(r(serde_json::json!({"query": "q", "limit": 0})).is_err());
        assert!(r(serde_json::json!({"query": "q", "limit": 51})).is_err());
        assert!(serde_json::from_value::<RecallArgs>(serde_json::json!({"query": "q", "limit": -1})).is_err());
        let a = |v| args::<AskArgs>(v).max_tokens();
        assert_eq!(a(serde_json::json!({"question": "q"})), Ok(DEFAULT_ANSWER_TOKENS));
        assert_eq!(a(serde_json::json!({"question": "q", "max_tokens": 1024})), Ok(1024));
        assert!(a(serde_json::json!({"question": "q", "max_tokens": 0})).is_err());
        assert!(a(serde_json::json!({"question": "q", "max_tokens": 1025})).is_err());
    }

    #[test]
    fn memory_uris() {
        assert_eq!(parse_memory_uri("memory://12"), Ok(12));
        assert_eq!(parse_memory_uri(&memory_uri(7)), Ok(7));
        for bad in ["memory://", "memory://x", "memory://-1", "memory://0", "file:///etc/passwd", "memory://1/2", MEMORY_LIST_URI] {
            assert!(parse_memory_uri(bad).is_err(), "{bad}");
        }
    }

    /// A version promoted by another process on the same profile (as `tailor train` does) is
    /// the one the next answer runs, and the answer says which.
    #[test]
    fn answers_run_the_version_another_process_promoted() {
        let dir = TempDir::new("mcp-version");
        let model = dir.0.join("tiny.gguf");
        let mut tiny = TinyModel::default();
        tiny.seed = 3;
        tiny.weight_scale = 0.3;
        tiny.write(&model).unwrap();
        let mut ec = tailor::EngineConfig::default();
        ec.threads = 2;
        let engine = tailor::Engine::load(&model, ec).unwrap();
        let path = dir.0.join("me.db");
        let open = || MemoryStore::open(&path, Arc::new(HashEmbedder::new(16, 0)), MemoryConfig::default()).unwrap();
        let pm = PersonalModel::open(&engine, open(), &path).unwrap();
        // The other process trains here; this one must not start a run of its own.
        let mut off = AutoTrain::default();
        off.enabled = false;
        pm.set_auto_train(off);
        let tools = Tools::new(pm, 256);
        for i in 0..6 {
            let fb = serde_json::json!({"prompt": format!("what is my cat called? ({i})"), "answer": "Tom.", "correction": "Zorblax."});
            tools.give_feedback(args(fb)).unwrap();
        }
        let ask = || tools.ask(args(serde_json::json!({"question": "what is my cat called?", "max_tokens": 3})), &|| false).unwrap();
        assert_eq!(ask().adapter_version, None);

        let trainer = PersonalModel::open(&engine, open(), &path).unwrap();
        let mut o = tailor_trainer::personal::PersonalOptions::default();
        o.train.lora_rank = 4;
        o.train.lora_alpha = 8.0;
        o.train.learning_rate = 3e-3;
        o.train.max_steps = Some(12);
        o.train.seed = 7;
        o.train.threads = 2;
        let outcome = trainer.train(&o, &mut |_| Flow::Continue).unwrap();
        let version = trainer.active_version().unwrap();
        assert!(outcome.promoted() && version.is_some(), "{:?}", outcome.decision);
        assert_eq!(ask().adapter_version, version);
        assert_eq!(tools.pm.registry().list()[0].name, PersonalModel::ADAPTER_NAME);
    }

    /// The default path: the feedback that makes `min_new_feedback` new events starts a
    /// background run and says so, and the personal model answers while it goes on.
    #[test]
    fn feedback_starts_training_and_answers_go_on() {
        let dir = TempDir::new("mcp-auto");
        let model = dir.0.join("tiny.gguf");
        TinyModel::default().write(&model).unwrap();
        let mut ec = tailor::EngineConfig::default();
        ec.threads = 2;
        let engine = tailor::Engine::load(&model, ec).unwrap();
        let path = dir.0.join("me.db");
        let store = MemoryStore::open(&path, Arc::new(HashEmbedder::new(16, 0)), MemoryConfig::default()).unwrap();
        let pm = PersonalModel::open(&engine, store, &path).unwrap();
        let mut auto = AutoTrain::default();
        auto.min_new_feedback = 2;
        auto.options.train.max_steps = Some(100_000); // runs until cancelled
        auto.options.train.threads = 2;
        pm.set_auto_train(auto);
        let tools = Tools::new(pm, 256);
        let give = |i: usize| tools.give_feedback(args(serde_json::json!({"prompt": format!("what is my cat called? ({i})"), "answer": "Tom.", "correction": "Zorblax."}))).unwrap();
        assert!(!give(0).training.started);
        assert!(tools.pm.training_job().is_none());
        assert!(give(1).training.started);
        let job = tools.pm.training_job().expect("a background run");
        let a = tools.ask(args(serde_json::json!({"question": "what is my cat called?", "max_tokens": 8})), &|| false).unwrap();
        assert!(a.tokens > 0 && a.finish_reason != "cancelled", "{a:?}");
        assert!(!job.is_finished(), "the run went on during the answer: {:?}", job.status());
        assert!(!give(2).training.started, "no second run while one goes on");
        job.cancel();
        let done = job.wait();
        assert_eq!(done.state, tailor_trainer::JobState::Cancelled, "{done:?}");
    }

    /// The tools over a tiny model and a hashing embedder: what each does to the store, and
    /// that the answer reports the memory that was put in its prompt.
    #[test]
    fn tools_over_a_profile() {
        let dir = TempDir::new("mcp-tools");
        let model = dir.0.join("tiny.gguf");
        TinyModel::default().write(&model).unwrap();
        let engine = tailor::Engine::load(&model, tailor::EngineConfig::default()).unwrap();
        let path = dir.0.join("me.db");
        let store = MemoryStore::open(&path, Arc::new(HashEmbedder::new(16, 0)), MemoryConfig::default()).unwrap();
        let pm = PersonalModel::open(&engine, store, &path).unwrap();
        let tools = Tools::new(pm, 256);

        let dog = tools.remember(args(serde_json::json!({"text": "My dog is called Biscuit.", "metadata": {"source": "chat"}}))).unwrap();
        assert_eq!(dog.action, "inserted");
        let same = tools.remember(args(serde_json::json!({"text": "My dog is called Biscuit."}))).unwrap();
        assert_eq!((same.id, same.action.as_str()), (dog.id, "unchanged"));
        let cat = tools.remember(args(serde_json::json!({"text": "The cat sleeps on the red sofa."}))).unwrap();
        assert_ne!(cat.id, dog.id);
        assert!(tools.remember(args(serde_json::json!({"text": "x", "importance": 2.0}))).unwrap_err().0.contains("importance"));
        assert!(tools.remember(args(serde_json::json!({"text": ""}))).is_err());
        assert_eq!(tools.memory(dog.id).unwrap().unwrap().metadata["source"], "chat");

        let hits = tools.recall(args(serde_json::json!({"query": "Biscuit", "limit": 1}))).unwrap().memories;
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].id, dog.id);
        assert!(tools.recall(args(serde_json::json!({"query": " "}))).is_err());

        let fb = tools.give_feedback(args(serde_json::json!({"prompt": "Hi", "answer": "Hello", "thumbs": "up"}))).unwrap();
        assert!(fb.id > 0 && fb.memory_id.is_none());
        assert!(!fb.training.started, "one event is not enough to train on");
        assert!(tools.give_feedback(args(serde_json::json!({"prompt": "", "answer": "Hello", "thumbs": "up"}))).is_err());

        let a = tools.ask(args(serde_json::json!({"question": "My dog is called Biscuit.", "max_tokens": 4})), &|| false).unwrap();
        assert!(a.tokens <= 4);
        assert_eq!(a.adapter_version, None);
        assert!(a.memories_used.iter().any(|m| m.id == dog.id), "{a:?}");
        let alone = tools.ask(args(serde_json::json!({"question": "My dog is called Biscuit.", "max_tokens": 4, "use_memory": false})), &|| false).unwrap();
        assert!(alone.memories_used.is_empty(), "{alone:?}");
        let again = tools.ask(args(serde_json::json!({"question": "My dog is called Biscuit.", "max_tokens": 4, "use_memory": true})), &|| false).unwrap();
        assert!(again.memories_used.iter().any(|m| m.id == dog.id), "{again:?}");
        let structured = tools.ask(args(serde_json::json!({"question": "Is it sunny?", "max_tokens": 40,
            "json_schema": {"type": "object", "properties": {"sunny": {"type": "boolean"}}, "required": ["sunny"], "additionalProperties": false}})), &|| false).unwrap();
        let v: serde_json::Value = serde_json::from_str(&structured.answer).unwrap_or_else(|e| panic!("{e}: {}", structured.answer));
        assert!(v["sunny"].is_boolean(), "{v}");
        assert!(tools.ask(args(serde_json::json!({"question": "x", "json_schema": {"type": 12}})), &|| false).is_err());
        let stopped = tools.ask(args(serde_json::json!({"question": "Tell me a story.", "max_tokens": 50})), &|| true).unwrap();
        assert_eq!(stopped.finish_reason, "cancelled");
        assert!(stopped.tokens <= 1, "{stopped:?}");

        let (page, next) = tools.list_memories(None, 1).unwrap();
        assert_eq!((page.len(), page[0].id, next), (1, dog.id, Some(dog.id)));
        let (page, _) = tools.list_memories(next, 10).unwrap();
        assert_eq!(page.iter().map(|m| m.id).collect::<Vec<_>>(), vec![cat.id]);

        assert_eq!(tools.forget(args(serde_json::json!({"id": dog.id}))).unwrap().forgotten, 1);
        assert!(tools.memory(dog.id).unwrap().is_none());
        assert!(tools.forget(args(serde_json::json!({"id": dog.id}))).unwrap_err().0.contains(&dog.id.to_string()));
        assert_eq!(tools.forget(args(serde_json::json!({"all": true, "confirm": true}))).unwrap().forgotten, 1);
        assert!(tools.list_memories(None, 10).unwrap().0.is_empty());
    }
}
