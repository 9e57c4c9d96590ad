//! Personalization from a profile: the user's feedback becomes training data, a new adapter
//! version is trained from scratch on all current feedback, an evaluation gate decides whether
//! it is promoted, and forgetting reaches the adapters.
//!
//! Layout of an adapters directory (for a profile file `alice.db`, [`adapters_dir`] is
//! `alice.db.adapters/` beside it):
//! - `<version>/`: one promoted version in PEFT's layout (saved atomically);
//! - `.checkpoint/`: the checkpoint of a run that was stopped or killed before the gate, so
//!   the next run on the same feedback resumes it; removed when a run reaches the gate and
//!   whenever feedback is forgotten ([`purge_tainted`]);
//! - `ACTIVE`: the name of the version to run (written to a temp file, fsynced, renamed);
//!   empty means the base alone. A missing or tainted `ACTIVE` falls back to the newest clean
//!   version whose directory exists ([`active_adapter`]).
//!
//! Mapping of feedback events ([`feedback_to_data`]):
//! - correction → SFT on the corrected answer, asked in every training paraphrase of the
//!   question ([`crate::augment`]), a few of them with the correction's memory in the system
//!   prompt; the newest correction of a question replaces older ones;
//! - thumbs up → the same on the model's answer;
//! - preference → DPO (chosen, rejected);
//! - thumbs down on a prompt that also has a correction → DPO (chosen = the correction,
//!   rejected = the thumbs-down answer); a lone thumbs down → nothing.
//!
//! Training mixes in self-distillation replay: general questions with the base model's own
//! answers as targets ([`distill_examples`]), which keeps unrelated answers where they were.
//!
//! The evaluation gate ([`Outcome`]) judges what the user cares about, on data never trained
//! on: the held-out paraphrases of the corrected questions (answer NLL, and how many greedy
//! answers state the corrected fact: no fewer than the base), the held-out preference pairs'
//! chosen−rejected margin (must rise), the specificity set (`data/specificity.json`: of the
//! general questions the base answers right, at most one in ten lost) and the NLL of a small
//! general-text set (`data/general.txt`, a rise under 3%).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tailor::profile::{Feedback, FeedbackKind, FeedbackQuery, MemoryStore};
use tailor::adapters::{LoraAdapter, LoraSet};
use tailor::{AdapterRegistry, ChatMessage, Engine, Flow, GenerateParams, LoraHook, Prompt};

use crate::{mean_nll, score_answers, PreferenceExample, Progress, SftExample, StopReason, TrainConfig, TrainData, TrainMetrics, Trainer};

/// The general-text set of the gate: ordinary English paragraphs written for Tailor.
pub const GENERAL_TEXT: &str = include_str!("../data/general.txt");

/// The replay set: questions answered by ordinary English paragraphs written for Tailor (none
/// of them in [`GENERAL_TEXT`]), mixed into training so that learning the user's facts does not wear
/// down the model's general text.
pub const REPLAY_TEXT: &str = include_str!("../data/replay.txt");

const SPECIFICITY_JSON: &str = include_str!("../data/specificity.json");

/// General questions for the self-distillation replay ([`distill_examples`]), one per line.
pub const DISTILL_QUESTIONS: &str = include_str!("../data/distill.txt");

/// The folder in an adapters directory holding a stopped run's checkpoint.
pub const CHECKPOINT_DIR: &str = ".checkpoint";

/// The file in an adapters directory naming the version to run.
pub const ACTIVE_FILE: &str = "ACTIVE";

/// What can go wrong while personalizing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Training or scoring failed.
    #[error(transparent)]
    Train(#[from] crate::Error),
    /// The profile store refused something.
    #[error(transparent)]
    Profile(#[from] tailor::profile::Error),
    /// The engine refused something (template, tokenizer).
    #[error(transparent)]
    Engine(#[from] tailor::Error),
    /// An adapter could not be saved.
    #[error(transparent)]
    Adapter(#[from] tailor::adapters::Error),
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The profile has no feedback that trains anything.
    #[error("no feedback to train on (thumbs-down events alone teach nothing)")]
    NoFeedback,
    /// There is no earlier version to roll back to.
    #[error("no adapter is active: nothing to roll back")]
    NothingToRollBack,
    /// A training run of this profile is already going on.
    #[error("a training run of this profile is already going on")]
    Busy,
    /// [`activate`] was asked for a version that cannot run.
    #[error("adapter version `{version}`: {reason}")]
    NoSuchVersion {
        /// The version asked for.
        version: String,
        /// Why it cannot be made active (unknown, tainted by forgetting, or not on disk).
        reason: String,
    },
    /// A background run panicked (a bug).
    #[error("the training thread panicked (a bug)")]
    Panicked,
}

impl Error {
    /// The variant's name (`"NoFeedback"`, `"Train"`, ...), for bindings and JSON.
    pub fn variant_name(&self) -> &'static str {
        match self {
            Error::Train(_) => "Train",
            Error::Profile(_) => "Profile",
            Error::Engine(_) => "Engine",
            Error::Adapter(_) => "Adapter",
            Error::Io { .. } => "Io",
            Error::NoFeedback => "NoFeedback",
            Error::NothingToRollBack => "NothingToRollBack",
            Error::Busy => "Busy",
            Error::NoSuchVersion { .. } => "NoSuchVersion",
            Error::Panicked => "Panicked",
        }
    }
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, Error>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

/// A held-out question the gate asks with greedy decoding: right when the answer contains
/// every one of `keywords` (case-insensitive).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Probe {
    /// The question (a held-out paraphrase of a corrected one).
    pub question: String,
    /// The corrected answer.
    pub answer: String,
    /// What a right answer must contain ([`answer_keywords`]).
    pub keywords: Vec<String>,
}

/// Training data made from feedback events.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct FeedbackData {
    /// What the run trains on.
    pub train: TrainData,
    /// Held-out paraphrases of the corrected (and thumbs-up) questions with their answers, for
    /// the gate's NLL: generated by other templates than the training ones, never a copy.
    pub held_out: Vec<SftExample>,
    /// The same held-out questions, asked with greedy decoding by the gate.
    pub probes: Vec<Probe>,
    /// Preference pairs kept out of training, for the gate's chosen−rejected margin.
    pub held_out_pairs: Vec<PreferenceExample>,
    /// The events used (training or held out), in id order.
    pub feedback_ids: Vec<i64>,
    /// Lone thumbs-down events, which teach nothing.
    pub skipped: usize,
}

/// Tokens of `prompt` as a user turn, rendered with the model's chat template.
fn prompt_tokens(engine: &Engine, prompt: &str) -> Result<Vec<u32>> {
    chat_tokens(engine, &[ChatMessage::user(prompt)])
}

fn chat_tokens(engine: &Engine, messages: &[ChatMessage]) -> Result<Vec<u32>> {
    Ok(engine.tokenize(&engine.render_chat(messages)?)?)
}

/// Tokens of an assistant answer, closed by the end-of-turn token.
fn answer_tokens(engine: &Engine, answer: &str) -> Result<Vec<u32>> {
    Ok(engine.tokenize(&format!("{answer}<|im_end|>"))?)
}

const STOPWORDS: &[&str] = &[
    "a", "an", "the", "is", "are", "was", "were", "be", "your", "you", "yours", "my", "i", "me", "it", "its", "of", "in", "on", "at",
    "to", "and", "or", "for", "with", "called", "named", "name", "that", "this", "do", "does", "did", "have", "has", "from", "as",
    "by", "so", "not", "no", "yes", "what", "who", "where", "which", "when", "how", "favourite", "favorite", "all", "very", "just",
];

fn word_list(s: &str) -> Vec<String> {
    s.split(|c: char| !c.is_alphanumeric() && c != '\'' && c != '-')
        .map(|w| w.trim_matches(|c: char| c == '\'' || c == '-'))
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// What a right answer to `question` must contain, read off the corrected `answer`: its
/// capitalised or numeric words that are not in the question (the name, the number, the
/// place), else all its words that are neither common nor in the question.
pub fn answer_keywords(question: &str, answer: &str) -> Vec<String> {
    let q: Vec<String> = word_list(question).iter().map(|w| w.to_lowercase()).collect();
    let content: Vec<String> = word_list(answer)
        .into_iter()
        .filter(|w| {
            let l = w.to_lowercase();
            !q.contains(&l) && !STOPWORDS.contains(&l.as_str())
        })
        .collect();
    let first_word = word_list(answer).into_iter().next().unwrap_or_default();
    let strong: Vec<String> = content
        .iter()
        .filter(|w| (w.chars().next().is_some_and(char::is_uppercase) && **w != first_word) || w.chars().any(|c| c.is_ascii_digit()))
        .cloned()
        .collect();
    let pick = if strong.is_empty() { content } else { strong };
    let mut out: Vec<String> = pick.into_iter().map(|w| w.to_lowercase()).collect();
    out.dedup();
    if out.is_empty() {
        out = word_list(answer).into_iter().map(|w| w.to_lowercase()).collect();
    }
    out
}

/// Whether `text` contains every keyword (case-insensitive).
pub fn states(text: &str, keywords: &[String]) -> bool {
    let t = text.to_lowercase();
    keywords.iter().all(|k| t.contains(k.as_str()))
}

/// The mirrored memory of a correction, as the profile store writes it.
fn correction_memory(prompt: &str, answer: &str) -> String {
    format!("Q: {} A: {}", prompt.trim(), answer.trim())
}

fn normalise(q: &str) -> String {
    q.trim().trim_end_matches(['?', '.', '!', ' ']).to_lowercase().split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Turns feedback events into training data (see the module docs for the mapping).
///
/// A correction (the latest one of each question: a newer correction of the same question
/// replaces an older one) and a thumbs up become one SFT example per training paraphrase of
/// the question ([`crate::augment::paraphrase`]; only the question itself when
/// [`PersonalOptions::paraphrases`] is off), plus [`PersonalOptions::memory_examples`] of them
/// with the correction's memory in the system prompt as inference shows it, so the adapter
/// works with and without memories. Their held-out paraphrases go to
/// [`FeedbackData::held_out`] and [`FeedbackData::probes`]. Every
/// [`PersonalOptions::held_out_every`]-th preference pair is held out for the margin (when
/// there are at least three).
pub fn feedback_to_data(engine: &Engine, feedback: &[Feedback], options: &PersonalOptions) -> Result<FeedbackData> {
    let mut events: Vec<&Feedback> = feedback.iter().collect();
    events.sort_by_key(|f| f.id);
    // The latest correction of each prompt: the "chosen" side of thumbs-down pairs, and the
    // one that is trained on.
    let mut corrections: HashMap<String, (i64, &str)> = HashMap::new();
    for f in &events {
        if let FeedbackKind::Correction { corrected } = &f.kind {
            corrections.insert(normalise(&f.prompt), (f.id, corrected));
        }
    }
    let memories: Vec<String> = {
        let mut v: Vec<(i64, String)> = events
            .iter()
            .filter_map(|f| match &f.kind {
                FeedbackKind::Correction { corrected } if corrections.get(&normalise(&f.prompt)).map(|c| c.0) == Some(f.id) => {
                    Some((f.id, correction_memory(&f.prompt, corrected)))
                }
                _ => None,
            })
            .collect();
        v.sort();
        v.into_iter().map(|(_, m)| m).collect()
    };
    let header = tailor::MemoryPromptConfig::default().header;
    let mut data = FeedbackData::default();
    let mut pairs = Vec::new();
    let mut sft_index = 0usize;
    for f in events {
        let pair = |chosen: &str, rejected: &str| -> Result<PreferenceExample> {
            Ok(PreferenceExample {
                prompt_tokens: prompt_tokens(engine, &f.prompt)?,
                chosen_tokens: answer_tokens(engine, chosen)?,
                rejected_tokens: answer_tokens(engine, rejected)?,
            })
        };
        let answer = match &f.kind {
            FeedbackKind::ThumbsUp => f.answer.as_str(),
            FeedbackKind::Correction { corrected } => {
                if corrections.get(&normalise(&f.prompt)).map(|c| c.0) != Some(f.id) {
                    // Superseded by a newer correction of the same question.
                    data.feedback_ids.push(f.id);
                    continue;
                }
                corrected.as_str()
            }
            FeedbackKind::Preference { chosen, rejected } => {
                pairs.push(pair(chosen, rejected)?);
                data.feedback_ids.push(f.id);
                continue;
            }
            FeedbackKind::ThumbsDown => match corrections.get(&normalise(&f.prompt)) {
                Some((_, c)) => {
                    pairs.push(pair(c, &f.answer)?);
                    data.feedback_ids.push(f.id);
                    continue;
                }
                None => {
                    data.skipped += 1;
                    continue;
                }
            },
            _ => {
                data.skipped += 1;
                continue;
            }
        };
        let mut para = if options.paraphrases {
            crate::augment::paraphrase(&f.prompt, answer)
        } else {
            let mut p = crate::augment::Paraphrases::default();
            p.train.push(f.prompt.trim().to_string());
            p
        };
        let a = answer_tokens(engine, answer)?;
        para.train.truncate(options.max_paraphrases.max(1));
        for q in &para.train {
            data.train.sft.push(SftExample { prompt_tokens: prompt_tokens(engine, q)?, answer_tokens: a.clone() });
        }
        if options.memory_examples > 0 {
            let own = correction_memory(&f.prompt, answer);
            for k in 0..options.memory_examples.min(para.train.len()) {
                // The question in another phrasing than the memory's, beside another memory
                // of the profile (as retrieval returns several) when there is one.
                let q = &para.train[(k * 3 + 1) % para.train.len()];
                let mut texts = vec![own.as_str()];
                if let Some(other) = memories.iter().filter(|m| **m != own).nth((sft_index + k) % memories.len().max(1)) {
                    texts.insert((sft_index + k) % 2, other.as_str());
                }
                let msgs = tailor::memory::with_memories(&[ChatMessage::user(q)], &tailor::memory::memory_block(&header, &texts));
                data.train.sft.push(SftExample { prompt_tokens: chat_tokens(engine, &msgs)?, answer_tokens: a.clone() });
            }
        }
        let keywords = answer_keywords(&f.prompt, answer);
        for q in para.held_out.iter().take(options.held_out_per_question) {
            data.held_out.push(SftExample { prompt_tokens: prompt_tokens(engine, q)?, answer_tokens: a.clone() });
            data.probes.push(Probe { question: q.clone(), answer: answer.to_string(), keywords: keywords.clone() });
        }
        sft_index += 1;
        data.feedback_ids.push(f.id);
    }
    let every = options.held_out_every;
    for (i, p) in pairs.into_iter().enumerate() {
        if every > 0 && i % every == every - 1 {
            data.held_out_pairs.push(p);
        } else {
            data.train.preferences.push(p);
        }
    }
    // At least one held-out pair once there are three.
    if every > 0 && data.held_out_pairs.is_empty() && data.train.preferences.len() >= 3 {
        let p = data.train.preferences.pop().expect("three pairs");
        data.held_out_pairs.push(p);
    }
    if options.preference_sft {
        for p in &data.train.preferences {
            data.train.sft.push(SftExample { prompt_tokens: p.prompt_tokens.clone(), answer_tokens: p.chosen_tokens.clone() });
        }
    }
    // A rewrite (or a prompt with its memory) too long for `max_seq_len` would leave no answer
    // token to train on or score: it is left out (feedback left with nothing that fits
    // trains nothing, like a lone thumbs down).
    let room = options.train.max_seq_len.min(engine.model_config().context_length.max(2));
    let fits = |e: &SftExample| e.prompt_tokens.len() < room;
    data.train.sft.retain(|e| fits(e));
    let keep: Vec<bool> = data.held_out.iter().map(fits).collect();
    let mut k = keep.iter();
    data.held_out.retain(|_| *k.next().unwrap_or(&true));
    let mut k = keep.iter();
    data.probes.retain(|_| *k.next().unwrap_or(&true));
    Ok(data)
}

/// The general-text set as SFT-like examples: each paragraph is the answer to a minimal
/// prompt, cut so that prompt + answer fit `max_len` tokens.
pub fn general_examples(engine: &Engine, max_len: usize) -> Result<Vec<SftExample>> {
    paragraph_examples(engine, GENERAL_TEXT, max_len)
}

/// The replay set ([`REPLAY_TEXT`]: blocks of a question line and a paragraph answering it)
/// as chat examples, cut to `max_len` tokens. Its questions differ from the one the gate's
/// [`general_examples`] are asked with, so replay keeps the model's general answers without
/// teaching it the gate's form.
pub fn replay_examples(engine: &Engine, max_len: usize) -> Result<Vec<SftExample>> {
    let mut out = Vec::new();
    for (question, paragraph) in replay_blocks() {
        let prompt = prompt_tokens(engine, question)?;
        let mut answer = answer_tokens(engine, paragraph)?;
        answer.truncate(max_len.saturating_sub(prompt.len()).max(1));
        out.push(SftExample { prompt_tokens: prompt, answer_tokens: answer });
    }
    Ok(out)
}

fn replay_blocks() -> impl Iterator<Item = (&'static str, &'static str)> {
    REPLAY_TEXT.split("\n\n").map(str::trim).filter(|b| !b.is_empty()).filter_map(|b| b.split_once('\n')).map(|(q, p)| (q.trim(), p.trim()))
}

/// Self-distillation replay: `n` general questions ([`DISTILL_QUESTIONS`] and the replay set's,
/// then made-up ones) with
/// the base model's own greedy answer (at most `max_tokens`) as the target, so training on the
/// user's feedback is pulled back to what the base says on everything else.
pub fn distill_examples(engine: &Engine, n: usize, max_tokens: usize) -> Result<Vec<SftExample>> {
    let questions = distill_questions(n);
    let answers = greedy_answers(engine, None, &questions, max_tokens)?;
    distill_from(engine, &questions, answers, max_tokens)
}

/// The `n` questions of [`distill_examples`].
pub fn distill_questions(n: usize) -> Vec<String> {
    // Short questions of world knowledge and the replay set's, interleaved (the first kind is
    // what a fact-learning adapter most easily talks over), then made-up ones.
    let short = DISTILL_QUESTIONS.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#'));
    let long = replay_blocks().map(|(q, _)| q);
    let mut questions: Vec<String> = Vec::new();
    let (mut a, mut b) = (short.peekable(), long.peekable());
    while questions.len() < n && (a.peek().is_some() || b.peek().is_some()) {
        for q in [a.next(), a.next(), b.next()].into_iter().flatten() {
            if questions.len() < n {
                questions.push(q.to_string());
            }
        }
    }
    if questions.len() < n {
        // Made-up ones, never a question of the gate's specificity set (training on it would
        // make that check a test of memorisation).
        let gate: std::collections::HashSet<String> = specificity_questions().into_iter().map(|(q, _)| q.to_lowercase()).collect();
        let mut seed = 17;
        while questions.len() < n && seed < 17 + 64 {
            for q in crate::synth::general_questions(seed, n - questions.len()) {
                if !gate.contains(&q.to_lowercase()) && !questions.contains(&q) {
                    questions.push(q);
                }
            }
            seed += 1;
        }
    }
    questions
}

/// Distillation examples from the base's `answers` to `questions`.
fn distill_from(engine: &Engine, questions: &[String], answers: Vec<String>, max_tokens: usize) -> Result<Vec<SftExample>> {
    let mut out = Vec::new();
    for (q, a) in questions.iter().zip(answers) {
        let mut answer = engine.tokenize(&a)?;
        if answer.len() < max_tokens {
            answer.extend(engine.tokenize("<|im_end|>")?);
        }
        // An empty answer (a model that ends at once, or has no end-of-turn token) teaches
        // nothing and cannot be trained on.
        if !answer.is_empty() {
            out.push(SftExample { prompt_tokens: prompt_tokens(engine, q)?, answer_tokens: answer });
        }
    }
    Ok(out)
}

/// Greedy answers to single-turn `questions` (no memories), with `adapter` or the base alone.
pub fn greedy_answers(engine: &Engine, adapter: Option<&LoraAdapter>, questions: &[String], max_tokens: usize) -> Result<Vec<String>> {
    let mut s = engine.new_session();
    if let Some(a) = adapter {
        let set = LoraSet::new().with(Arc::new(a.clone()), 1.0);
        s.set_hooks(LoraHook::from_set(engine, &set)?.into_hooks());
    }
    let mut params = GenerateParams::default();
    params.max_tokens = max_tokens;
    questions
        .iter()
        .map(|q| Ok(s.generate(&Prompt::Chat(vec![ChatMessage::user(q)]), &params, &mut |_| Flow::Continue)?.text.trim().to_string()))
        .collect()
}

/// The file in an adapters directory caching the base model's answers to the gate's fixed
/// questions (keyed by the base fingerprint; derived data, rebuilt when missing or damaged).
pub const GATE_CACHE_FILE: &str = ".gate-cache.json";

/// The default base model's greedy answers to the gate's specificity questions
/// ([`SPECIFICITY_TOKENS`]) and
/// to the distillation questions (40 tokens), keyed like [`GATE_CACHE_FILE`] by `<base
/// fingerprint>:<max tokens>`; made by `cargo run --release -p tailor-trainer --example
/// base_answers` (derived data: any other base, or a question not in it, is answered at run
/// time and cached).
pub const SHIPPED_BASE_ANSWERS: &str = include_str!("../data/base-answers.json");

fn shipped_base_answers() -> &'static HashMap<String, HashMap<String, String>> {
    static SHIPPED: std::sync::OnceLock<HashMap<String, HashMap<String, String>>> = std::sync::OnceLock::new();
    SHIPPED.get_or_init(|| serde_json::from_str(SHIPPED_BASE_ANSWERS).unwrap_or_default())
}

/// Greedy base answers to `questions`, from [`GATE_CACHE_FILE`] when it holds them for this
/// base, else generated and cached (written atomically; a failed write only costs time).
fn base_answers_cached(engine: &Engine, adapters_dir: &Path, questions: &[String], max_tokens: usize) -> Result<Vec<String>> {
    let path = adapters_dir.join(GATE_CACHE_FILE);
    let key = format!("{}:{max_tokens}", engine.base_fingerprint().as_str());
    let mut cache: HashMap<String, HashMap<String, String>> =
        std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    let known = cache.entry(key.clone()).or_default();
    // The default base's answers ship with the crate ([`SHIPPED_BASE_ANSWERS`]): a first run
    // need not decode them.
    if let Some(shipped) = shipped_base_answers().get(&key) {
        for q in questions {
            if let Some(a) = shipped.get(q) {
                known.entry(q.clone()).or_insert_with(|| a.clone());
            }
        }
    }
    let missing: Vec<String> = questions.iter().filter(|q| !known.contains_key(*q)).cloned().collect();
    if !missing.is_empty() {
        for (q, a) in missing.iter().zip(greedy_answers(engine, None, &missing, max_tokens)?) {
            known.insert(q.clone(), a);
        }
        if std::fs::create_dir_all(adapters_dir).is_ok() {
            let tmp = adapters_dir.join(format!(".{GATE_CACHE_FILE}.tmp-{}", std::process::id()));
            let written = serde_json::to_vec(&cache).map_err(std::io::Error::other).and_then(|b| std::fs::write(&tmp, b)).and_then(|_| std::fs::rename(&tmp, &path));
            if written.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
        }
    }
    Ok(questions.iter().map(|q| cache[&key][q].clone()).collect())
}

/// How many tokens of an answer to a specificity question the gate reads (greedy). 16 judged
/// truncation, not knowledge: "A week is a standard unit of time in the Gregorian calendar, and
/// it's" counted as a lost answer; at 32 "The Mona Lisa is a classic example of a Renaissance
/// art piece, [...] The painting is attributed" still did (on an AVX-512 CPU); 48 lets the
/// second sentence finish.
pub const SPECIFICITY_TOKENS: usize = 48;

/// The specificity set of the gate (`data/specificity.json`): general questions and what a
/// right answer contains (alternatives split by `|`).
pub fn specificity_questions() -> Vec<(String, Vec<String>)> {
    #[derive(serde::Deserialize)]
    struct Q {
        question: String,
        keyword: String,
    }
    #[derive(serde::Deserialize)]
    struct File {
        questions: Vec<Q>,
    }
    let f: File = serde_json::from_str(SPECIFICITY_JSON).unwrap_or(File { questions: Vec::new() });
    f.questions.into_iter().map(|q| (q.question, q.keyword.split('|').map(|k| k.to_lowercase()).collect())).collect()
}

fn right_any(text: &str, alternatives: &[String]) -> bool {
    let t = text.to_lowercase();
    alternatives.iter().any(|k| t.contains(k.as_str()))
}

fn paragraph_examples(engine: &Engine, text: &str, max_len: usize) -> Result<Vec<SftExample>> {
    let prompt = prompt_tokens(engine, "Write a short paragraph.")?;
    let room = max_len.saturating_sub(prompt.len()).max(1);
    text
        .split("\n\n")
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut answer = engine.tokenize(p)?;
            answer.truncate(room);
            Ok(SftExample { prompt_tokens: prompt.clone(), answer_tokens: answer })
        })
        .collect()
}

/// Settings of [`train_profile`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PersonalOptions {
    /// The training run (a new version always starts from scratch).
    pub train: TrainConfig,
    /// Rewrite every corrected question into its training paraphrases ([`crate::augment`]).
    pub paraphrases: bool,
    /// At most this many training phrasings per question (the question itself included).
    pub max_paraphrases: usize,
    /// Training examples per correction with its memory in the system prompt.
    pub memory_examples: usize,
    /// Held-out paraphrases per corrected question that the gate scores and asks.
    pub held_out_per_question: usize,
    /// Hold out every this-many-th preference pair for the gate's margin.
    pub held_out_every: usize,
    /// Also train SFT on the chosen answer of every preference pair (DPO plus an NLL term on
    /// the chosen side, as RPO does): DPO alone on a handful of pairs pushes the chosen answers'
    /// shared opening up until the model repeats it.
    pub preference_sft: bool,
    /// Runs shorter than this many optimizer steps (a few pairs, one epoch) are stretched to
    /// it, cycling over the data.
    pub min_steps: usize,
    /// Self-distillation replay: up to this many general questions answered by the base itself
    /// are mixed into training ([`distill_examples`]; `0`: none), at most twice as many as the
    /// SFT examples of corrections and thumbs up (none for preference pairs alone).
    pub distill: usize,
    /// Longest base answer used as a distillation target, in tokens.
    pub distill_tokens: usize,
    /// Replay paragraphs ([`REPLAY_TEXT`], cycled) mixed into training, as a fraction of the
    /// feedback's SFT examples (`0`: none).
    pub replay: f32,
    /// Largest relative rise of the general-text NLL over the base's that is accepted.
    pub max_general_increase: f64,
    /// Ask the specificity set ([`specificity_questions`]) with the base and the new version;
    /// of the questions the base answers right, the version may lose at most this fraction.
    pub max_specificity_loss: Option<f64>,
    /// Checkpoint the run into `adapters_dir/.checkpoint/` every this many steps (`0`: no
    /// checkpoints), so that a stopped or killed run resumes where it was when it is started
    /// again on the same feedback.
    pub checkpoint_every: usize,
}

impl Default for PersonalOptions {
    fn default() -> Self {
        // From the sweep (bench/results/personalization_sweep.md): one epoch at 6e-4 learns
        // as much as two at 3e-4 in half the time. Two examples a step, packed into one pass
        // (the same gradient as two accumulated passes, 6% faster).
        let train = TrainConfig { learning_rate: 6e-4, epochs: 1, warmup_steps: 4, batch_size: 2, grad_accum_steps: 1, ..TrainConfig::default() };
        PersonalOptions {
            train,
            paraphrases: true,
            max_paraphrases: 22,
            memory_examples: 2,
            held_out_per_question: 3,
            held_out_every: 5,
            preference_sft: true,
            min_steps: 24,
            distill: 96,
            distill_tokens: 40,
            replay: 0.25,
            max_general_increase: 0.03,
            max_specificity_loss: Some(0.1),
            checkpoint_every: 5,
        }
    }
}

/// What the gate decided.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// The new version was saved, recorded and made active.
    Promoted {
        /// Its version name.
        version: String,
        /// Its directory.
        path: PathBuf,
    },
    /// Nothing changed.
    Refused {
        /// Why.
        reason: String,
    },
}

/// The result of [`train_profile`], with the gate's figures.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Outcome {
    /// Promoted or refused.
    pub decision: Decision,
    /// Held-out answer NLL under the base alone (held-out paraphrases of the feedback).
    pub held_out_before: f64,
    /// Held-out answer NLL with the new adapter.
    pub held_out_after: f64,
    /// Whether there was no held-out example and the training examples were scored instead.
    pub held_out_in_sample: bool,
    /// Held-out paraphrases asked (greedy) by the gate.
    pub probes: usize,
    /// Of those, answered with the corrected fact by the base alone.
    pub probes_right_before: usize,
    /// Of those, answered with the corrected fact with the new adapter.
    pub probes_right_after: usize,
    /// Specificity questions the base answers right.
    pub specificity_base_right: usize,
    /// Of those, answered wrong with the new adapter.
    pub specificity_lost: usize,
    /// The questions lost: (question, the base's answer, the new answer).
    pub specificity_changes: Vec<(String, String, String)>,
    /// Mean held-out chosen−rejected log-probability margin (summed over answer tokens),
    /// base alone (`None`: no held-out pair).
    pub margin_before: Option<f64>,
    /// The same with the new adapter.
    pub margin_after: Option<f64>,
    /// General-text NLL under the base alone.
    pub general_before: f64,
    /// General-text NLL with the new adapter.
    pub general_after: f64,
    /// Training examples from the feedback (SFT + pairs).
    pub train_examples: usize,
    /// Held-out examples.
    pub held_out_examples: usize,
    /// Replay examples mixed into training (distillation and paragraphs).
    pub replay_examples: usize,
    /// Feedback events used.
    pub feedback_ids: Vec<i64>,
    /// The run's figures (steps, tokens/s, ...).
    pub metrics: TrainMetrics,
    /// Seconds spent making the data (paraphrases, distillation answers).
    pub prepare_seconds: f64,
    /// Seconds the gate took.
    pub gate_seconds: f64,
    /// The trained adapter, promoted or not (to inspect a refused one; `None` when the run
    /// was stopped).
    pub adapter: Option<Arc<LoraAdapter>>,
}

impl Outcome {
    /// Whether the new version was promoted.
    pub fn promoted(&self) -> bool {
        matches!(self.decision, Decision::Promoted { .. })
    }

    /// Relative change of the general-text NLL (`0.03` = 3% higher).
    pub fn general_change(&self) -> f64 {
        self.general_after / self.general_before - 1.0
    }

    /// The gate's figures in one line, as the front ends print them.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "held-out paraphrases answered right {}/{n} -> {}/{n} (NLL {:.3} -> {:.3}{})",
            self.probes_right_before,
            self.probes_right_after,
            self.held_out_before,
            self.held_out_after,
            if self.held_out_in_sample { ", in-sample" } else { "" },
            n = self.probes
        );
        if self.specificity_base_right > 0 {
            s.push_str(&format!("; unrelated questions lost {}/{}", self.specificity_lost, self.specificity_base_right));
        }
        if let (Some(b), Some(a)) = (self.margin_before, self.margin_after) {
            s.push_str(&format!("; preference margin {b:+.2} -> {a:+.2}"));
        }
        s.push_str(&format!("; general-text NLL {:+.2}%", self.general_change() * 100.0));
        s
    }
}

/// Trains a new adapter version from all the profile's current feedback (forgotten events
/// are gone from the store, so never in it), starting from scratch, and promotes it if the
/// gate accepts it: saved atomically to `adapters_dir/<version>`, recorded in the lineage with
/// the previous active version as parent, the events marked consumed by it, and `ACTIVE`
/// pointed at it. A refusal leaves the profile and the directory as they were.
pub fn train_profile(
    engine: &Engine,
    store: &mut MemoryStore,
    adapters_dir: &Path,
    options: &PersonalOptions,
    progress: &mut dyn FnMut(&Progress) -> Flow,
) -> Result<Outcome> {
    train_with(engine, &mut |f| f(store), adapters_dir, options, progress)
}

/// [`train_profile`] on a store shared with running sessions: the lock is held only to read
/// the feedback and to record a promotion, never while training or scoring. Feedback
/// forgotten while the run trained makes the gate refuse (the new version learned from it).
pub fn train_shared(
    engine: &Engine,
    store: &Mutex<MemoryStore>,
    adapters_dir: &Path,
    options: &PersonalOptions,
    progress: &mut dyn FnMut(&Progress) -> Flow,
) -> Result<Outcome> {
    train_with(engine, &mut |f| f(&mut lock_store(store)), adapters_dir, options, progress)
}

/// Locks a shared store, taking it over from a thread that panicked while holding it (the
/// store itself is transactional, so a poisoned lock leaves it consistent).
pub(crate) fn lock_store(store: &Mutex<MemoryStore>) -> MutexGuard<'_, MemoryStore> {
    store.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f` with the store locked (or borrowed) for as long as `f` runs.
type WithStore<'a> = dyn FnMut(&mut dyn FnMut(&mut MemoryStore) -> Result<()>) -> Result<()> + 'a;

fn train_with(
    engine: &Engine,
    with_store: &mut WithStore<'_>,
    adapters_dir: &Path,
    options: &PersonalOptions,
    progress: &mut dyn FnMut(&Progress) -> Flow,
) -> Result<Outcome> {
    let prepare_start = Instant::now();
    let mut query = FeedbackQuery::default();
    query.limit = 1_000_000;
    let mut feedback = Vec::new();
    with_store(&mut |s| {
        feedback = s.list_feedback(&query)?;
        Ok(())
    })?;
    let data = feedback_to_data(engine, &feedback, options)?;
    if data.train.is_empty() {
        return Err(Error::NoFeedback);
    }
    let threads = options.train.threads;
    let (eval, in_sample) = if data.held_out.is_empty() {
        let mut e = data.train.sft.clone();
        e.extend(data.train.preferences.iter().map(|p| SftExample {
            prompt_tokens: p.prompt_tokens.clone(),
            answer_tokens: p.chosen_tokens.clone(),
        }));
        (e, true)
    } else {
        (data.held_out.clone(), false)
    };
    let general = general_examples(engine, options.train.max_seq_len)?;

    let mut config = options.train.clone();
    let checkpoint = adapters_dir.join(CHECKPOINT_DIR);
    let per_step = (config.batch_size * config.grad_accum_steps).max(1);
    if options.checkpoint_every > 0 {
        config.checkpoint_dir = Some(checkpoint.clone());
        config.checkpoint_every = options.checkpoint_every;
        config.resume = true;
    }
    let mut train = data.train.clone();
    let replay = replay_examples(engine, options.train.max_seq_len)?;
    let n_replay = if replay.is_empty() { 0 } else { (train.sft.len() as f32 * options.replay.max(0.0)).ceil() as usize };
    train.sft.extend(replay.iter().cycle().take(n_replay).cloned());
    // Distillation holds what fact learning drags along (short confident answers to every
    // question of the same shape) near the base: as much of it as the feedback's own SFT
    // examples call for, up to `distill`. Preference pairs are held near the base by DPO's
    // reference already, and base answers to general prompts would teach against the very
    // style a preference asks for on them.
    let pref_sft = if options.preference_sft { data.train.preferences.len() } else { 0 };
    let n_distill = options.distill.min(2 * data.train.sft.len().saturating_sub(pref_sft));
    let distilled = if n_distill > 0 {
        // The base's answers are the same every run: shipped for the default base, else
        // decoded once and cached beside the gate's.
        let questions = distill_questions(n_distill);
        let answers = base_answers_cached(engine, adapters_dir, &questions, options.distill_tokens)?;
        distill_from(engine, &questions, answers, options.distill_tokens)?
    } else {
        Vec::new()
    };
    let n_distill = distilled.len();
    train.sft.extend(distilled);
    if config.max_steps.is_none() && config.epochs * train.len().div_ceil(per_step) < options.min_steps {
        config.max_steps = Some(options.min_steps);
    }
    let prepare_seconds = prepare_start.elapsed().as_secs_f64();
    let out = match Trainer::new(engine, config.clone())?.train(&train, progress) {
        // A checkpoint left by a run on other feedback or settings (or a damaged one) cannot
        // be resumed: it is discarded and the run starts from scratch.
        Err(e) if e.kind() == crate::ErrorKind::Checkpoint && checkpoint.exists() => {
            std::fs::remove_dir_all(&checkpoint).map_err(io(&checkpoint))?;
            Trainer::new(engine, config)?.train(&train, progress)?
        }
        r => r?,
    };
    let stopped = matches!(out.metrics.stop, StopReason::Cancelled | StopReason::Callback);
    if !stopped && checkpoint.exists() {
        // The run reached the gate: nothing to resume, and no trained state left lying around.
        std::fs::remove_dir_all(&checkpoint).map_err(io(&checkpoint))?;
    }
    let gate_start = Instant::now();
    let mut outcome = Outcome {
        decision: Decision::Refused { reason: String::new() },
        held_out_before: f64::NAN,
        held_out_after: f64::NAN,
        held_out_in_sample: in_sample,
        probes: data.probes.len(),
        probes_right_before: 0,
        probes_right_after: 0,
        specificity_base_right: 0,
        specificity_lost: 0,
        specificity_changes: Vec::new(),
        margin_before: None,
        margin_after: None,
        general_before: f64::NAN,
        general_after: f64::NAN,
        train_examples: data.train.len(),
        held_out_examples: data.held_out.len(),
        replay_examples: n_replay + n_distill,
        feedback_ids: data.feedback_ids.clone(),
        metrics: out.metrics.clone(),
        prepare_seconds,
        gate_seconds: 0.0,
        adapter: None,
    };
    if stopped {
        outcome.decision = Decision::Refused { reason: "the run was stopped (started again on the same feedback, it resumes)".into() };
        return Ok(outcome);
    }
    outcome.adapter = Some(Arc::new(out.adapter.clone()));
    let gate = gate(engine, &out.adapter, &data, &eval, &general, options, threads, adapters_dir, &mut outcome)?;
    outcome.gate_seconds = gate_start.elapsed().as_secs_f64();
    if let Some(reason) = gate {
        outcome.decision = Decision::Refused { reason };
        return Ok(outcome);
    }

    // Promotion, with the store held from the check that the feedback is all still there to
    // the record of the new version, so a concurrent forget is either seen here or comes after
    // (and then taints the new version like any other).
    let mut decision = None;
    with_store(&mut |store| {
        let mut q = FeedbackQuery::default();
        q.limit = 1_000_000;
        let present: std::collections::HashSet<i64> = store.list_feedback(&q)?.iter().map(|f| f.id).collect();
        if let Some(gone) = data.feedback_ids.iter().find(|id| !present.contains(id)) {
            decision = Some(Decision::Refused {
                reason: format!("feedback {gone} was forgotten while the run trained; train again"),
            });
            return Ok(());
        }
        decision = Some(promote(store, adapters_dir, &out, &data.feedback_ids, &outcome)?);
        Ok(())
    })?;
    outcome.decision = decision.expect("set by the closure");
    Ok(outcome)
}

/// Scores the new version against the base and fills in `outcome`'s figures; `Some(reason)`
/// refuses it. Written so that a NaN refuses.
#[allow(clippy::too_many_arguments)]
fn gate(
    engine: &Engine,
    adapter: &LoraAdapter,
    data: &FeedbackData,
    eval: &[SftExample],
    general: &[SftExample],
    options: &PersonalOptions,
    threads: usize,
    adapters_dir: &Path,
    outcome: &mut Outcome,
) -> Result<Option<String>> {
    use std::cmp::Ordering::Less;
    outcome.held_out_before = mean_nll(&score_answers(engine, None, eval, threads)?);
    outcome.held_out_after = mean_nll(&score_answers(engine, Some(adapter), eval, threads)?);
    outcome.general_before = mean_nll(&score_answers(engine, None, general, threads)?);
    outcome.general_after = mean_nll(&score_answers(engine, Some(adapter), general, threads)?);
    if !data.probes.is_empty() {
        let questions: Vec<String> = data.probes.iter().map(|p| p.question.clone()).collect();
        let max = data.probes.iter().map(|p| engine.tokenize(&p.answer).map(|t| t.len()).unwrap_or(16)).max().unwrap_or(16) + 6;
        let right = |answers: Vec<String>| answers.iter().zip(&data.probes).filter(|(a, p)| states(a, &p.keywords)).count();
        outcome.probes_right_before = right(greedy_answers(engine, None, &questions, max)?);
        outcome.probes_right_after = right(greedy_answers(engine, Some(adapter), &questions, max)?);
    }
    if !data.held_out_pairs.is_empty() {
        let margin = |a: Option<&LoraAdapter>| -> Result<f64> {
            let side = |chosen: bool| -> Vec<SftExample> {
                data.held_out_pairs
                    .iter()
                    .map(|p| SftExample { prompt_tokens: p.prompt_tokens.clone(), answer_tokens: if chosen { p.chosen_tokens.clone() } else { p.rejected_tokens.clone() } })
                    .collect()
            };
            let c = score_answers(engine, a, &side(true), threads)?;
            let r = score_answers(engine, a, &side(false), threads)?;
            Ok(c.iter().zip(&r).map(|(c, r)| c.logprob - r.logprob).sum::<f64>() / c.len() as f64)
        };
        outcome.margin_before = Some(margin(None)?);
        outcome.margin_after = Some(margin(Some(adapter))?);
    }
    let mut specificity_refusal = None;
    if let Some(limit) = options.max_specificity_loss {
        let set = specificity_questions();
        let questions: Vec<String> = set.iter().map(|(q, _)| q.clone()).collect();
        let base = base_answers_cached(engine, adapters_dir, &questions, SPECIFICITY_TOKENS)?;
        let known: Vec<usize> = (0..set.len()).filter(|&i| right_any(&base[i], &set[i].1)).collect();
        let asked: Vec<String> = known.iter().map(|&i| questions[i].clone()).collect();
        let after = greedy_answers(engine, Some(adapter), &asked, SPECIFICITY_TOKENS)?;
        outcome.specificity_base_right = known.len();
        for (&i, a) in known.iter().zip(&after) {
            if !right_any(a, &set[i].1) {
                outcome.specificity_changes.push((questions[i].clone(), base[i].clone(), a.clone()));
            }
        }
        outcome.specificity_lost = outcome.specificity_changes.len();
        let allowed = (known.len() as f64 * limit).floor() as usize;
        if outcome.specificity_lost > allowed {
            specificity_refusal = Some(format!(
                "it answers {} of the {} unrelated questions the base answers right wrongly (at most {allowed} allowed)",
                outcome.specificity_lost,
                known.len()
            ));
        }
    }
    if specificity_refusal.is_some() {
        return Ok(specificity_refusal);
    }
    let (before, after) = (outcome.held_out_before, outcome.held_out_after);
    let has_sft = !eval.is_empty();
    if has_sft && after.partial_cmp(&before) != Some(Less) {
        return Ok(Some(format!("held-out NLL did not improve ({before:.4} → {after:.4})")));
    }
    if outcome.probes_right_after < outcome.probes_right_before {
        return Ok(Some(format!(
            "it answers fewer held-out paraphrases right than the base ({} → {} of {})",
            outcome.probes_right_before, outcome.probes_right_after, outcome.probes
        )));
    }
    if let (Some(b), Some(a)) = (outcome.margin_before, outcome.margin_after) {
        if a.partial_cmp(&b) != Some(std::cmp::Ordering::Greater) {
            return Ok(Some(format!("the held-out preference margin did not rise ({b:+.3} → {a:+.3})")));
        }
    }
    let change = outcome.general_change();
    if change.partial_cmp(&options.max_general_increase) != Some(Less) {
        return Ok(Some(format!(
            "general-text NLL rose {:.1}% ({:.4} → {:.4}), the limit is {:.1}%",
            change * 100.0,
            outcome.general_before,
            outcome.general_after,
            options.max_general_increase * 100.0
        )));
    }
    Ok(None)
}

/// Saves the trained adapter as a new version, records it with its lineage and the feedback it
/// consumed, and makes it active.
fn promote(store: &mut MemoryStore, adapters_dir: &Path, out: &crate::TrainOutput, feedback_ids: &[i64], outcome: &Outcome) -> Result<Decision> {
    let parent = active_adapter(store, adapters_dir)?.map(|(v, _)| v);
    let known: Vec<String> = store.list_adapters()?.into_iter().map(|a| a.version).collect();
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut n = known.len() + 1;
    let version = loop {
        let v = format!("v{n}-{stamp}");
        if !known.contains(&v) && !adapters_dir.join(&v).exists() {
            break v;
        }
        n += 1;
    };
    let path = adapters_dir.join(&version);
    tailor::adapters::peft::save(&out.adapter, &path)?;
    let (held_out_before, held_out_after, in_sample) = (outcome.held_out_before, outcome.held_out_after, outcome.held_out_in_sample);
    let (general_before, general_after) = (outcome.general_before, outcome.general_after);
    let metrics = serde_json::json!({
        "held_out_nll_before": held_out_before,
        "held_out_nll_after": held_out_after,
        "held_out_in_sample": in_sample,
        "general_nll_before": general_before,
        "general_nll_after": general_after,
        "probes": outcome.probes,
        "probes_right_before": outcome.probes_right_before,
        "probes_right_after": outcome.probes_right_after,
        "specificity_base_right": outcome.specificity_base_right,
        "specificity_lost": outcome.specificity_lost,
        "margin_before": outcome.margin_before,
        "margin_after": outcome.margin_after,
        "train_examples": outcome.train_examples,
        "held_out_examples": outcome.held_out_examples,
        "steps": out.metrics.steps,
        "trained_tokens": out.metrics.trained_tokens,
        "tokens_per_s": out.metrics.tokens_per_s,
    });
    let recorded = store
        .record_adapter(&version, parent.as_deref(), metrics)
        .and_then(|_| store.mark_feedback_consumed(feedback_ids, &version));
    if let Err(e) = recorded {
        let _ = std::fs::remove_dir_all(&path);
        return Err(e.into());
    }
    write_active(adapters_dir, Some(&version))?;
    Ok(Decision::Promoted { version, path })
}

/// Where the adapter versions of the profile at `profile_path` live: `<file name>.adapters/`
/// beside the profile file (so two profiles in one directory never share versions).
pub fn adapters_dir(profile_path: &Path) -> PathBuf {
    let mut name = profile_path.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "profile".into());
    name.push(".adapters");
    profile_path.parent().unwrap_or(Path::new(".")).join(name)
}

/// Makes a running engine's `registry` run the profile's active version ([`active_adapter`]):
/// loaded under `name` (only when it is not already the version loaded there) and put in the
/// active set with weight 1, the set's other members untouched; when the profile has no
/// usable version (none promoted, rolled back to the base, or every version tainted by
/// forgetting) the adapter `name` is unloaded. Sessions following the registry pick the
/// change up at their next generation. Returns the version now running under `name`.
///
/// Call it after a promotion ([`train_profile`]), a [`rollback`] and after forgetting
/// feedback ([`purge_tainted`]).
pub fn sync_registry(registry: &AdapterRegistry, store: &MemoryStore, adapters_dir: &Path, name: &str) -> Result<Option<String>> {
    let loaded = registry.list().into_iter().find(|a| a.name == name);
    match active_adapter(store, adapters_dir)? {
        Some((version, path)) => {
            if loaded.as_ref().and_then(|a| a.source.as_ref()) != Some(&path) {
                registry.load(name, &path)?;
            }
            registry.set_weight(name, Some(1.0))?;
            Ok(Some(version))
        }
        None => {
            if loaded.is_some() {
                registry.unload(name)?;
            }
            Ok(None)
        }
    }
}

/// Points `adapters_dir/ACTIVE` at `version` (`None`: the base alone), atomically.
fn write_active(adapters_dir: &Path, version: Option<&str>) -> Result<()> {
    std::fs::create_dir_all(adapters_dir).map_err(io(adapters_dir))?;
    let tmp = adapters_dir.join(format!(".{ACTIVE_FILE}.tmp-{}", std::process::id()));
    let target = adapters_dir.join(ACTIVE_FILE);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(version.unwrap_or("").as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &target)?;
        // The rename itself is made durable by syncing the directory (Unix).
        #[cfg(unix)]
        std::fs::File::open(adapters_dir)?.sync_all()?;
        Ok(())
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::Io { path: target.clone(), source: e }
    })
}

/// The `ACTIVE` file's content: `None` when missing, `Some(None)` for the base alone.
fn read_active(adapters_dir: &Path) -> Result<Option<Option<String>>> {
    let p = adapters_dir.join(ACTIVE_FILE);
    match std::fs::read_to_string(&p) {
        Ok(s) => {
            let s = s.trim();
            Ok(Some((!s.is_empty()).then(|| s.to_string())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Io { path: p, source: e }),
    }
}

/// The adapter version to run and its directory: the one `ACTIVE` names if it is clean and on
/// disk; otherwise (missing, tainted by forgetting, or deleted) the newest clean version whose
/// directory exists. `None`: run the base alone (also when `ACTIVE` says so after a rollback
/// past the first version).
pub fn active_adapter(store: &MemoryStore, adapters_dir: &Path) -> Result<Option<(String, PathBuf)>> {
    let adapters = store.list_adapters()?;
    let usable = |v: &str| adapters.iter().any(|a| a.version == v && a.tainted_at.is_none()) && adapters_dir.join(v).is_dir();
    match read_active(adapters_dir)? {
        Some(None) => return Ok(None),
        Some(Some(v)) if usable(&v) => {
            let p = adapters_dir.join(&v);
            return Ok(Some((v, p)));
        }
        _ => {}
    }
    Ok(adapters.iter().rev().find(|a| usable(&a.version)).map(|a| (a.version.clone(), adapters_dir.join(&a.version))))
}

/// Makes the active version's parent (the nearest clean ancestor still on disk) active, or the
/// base alone when there is none. Versions stay on disk. Returns the new active version.
pub fn rollback(store: &MemoryStore, adapters_dir: &Path) -> Result<Option<String>> {
    let (current, _) = active_adapter(store, adapters_dir)?.ok_or(Error::NothingToRollBack)?;
    let adapters = store.list_adapters()?;
    let find = |v: &str| adapters.iter().find(|a| a.version == v);
    let mut next = find(&current).and_then(|a| a.parent.clone());
    while let Some(v) = next.clone() {
        match find(&v) {
            Some(a) if a.tainted_at.is_none() && adapters_dir.join(&v).is_dir() => break,
            Some(a) => next = a.parent.clone(),
            None => next = None,
        }
    }
    write_active(adapters_dir, next.as_deref())?;
    Ok(next)
}

/// Makes `version` the active one (a version recorded in the lineage, clean, and on disk), e.g.
/// to go back to a version after a [`rollback`] or to pick one by its figures; versions stay on
/// disk and the lineage is unchanged. [`Error::NoSuchVersion`] for any other version.
pub fn activate(store: &MemoryStore, adapters_dir: &Path, version: &str) -> Result<()> {
    let no = |reason: &str| Error::NoSuchVersion { version: version.to_owned(), reason: reason.to_owned() };
    let record = store.list_adapters()?.into_iter().find(|a| a.version == version).ok_or_else(|| no("not in the profile's lineage"))?;
    if record.tainted_at.is_some() {
        return Err(no("it learned from forgotten feedback"));
    }
    if !adapters_dir.join(version).is_dir() {
        return Err(no("its directory is gone"));
    }
    write_active(adapters_dir, Some(version))
}

/// Deletes the directories of every tainted version (those that learned from forgotten
/// feedback) and any stopped run's checkpoint, so nothing the user asked to forget survives
/// in an adapter. Returns the versions whose directories were removed.
pub fn purge_tainted(store: &MemoryStore, adapters_dir: &Path) -> Result<Vec<String>> {
    let checkpoint = adapters_dir.join(CHECKPOINT_DIR);
    if checkpoint.exists() {
        std::fs::remove_dir_all(&checkpoint).map_err(io(&checkpoint))?;
    }
    let mut removed = Vec::new();
    for a in store.list_adapters()? {
        let dir = adapters_dir.join(&a.version);
        if a.tainted_at.is_some() && dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
            removed.push(a.version);
        }
    }
    Ok(removed)
}
