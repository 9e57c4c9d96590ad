//! `tailor.PersonalModel`: one user's profile (`tailor_trainer::PersonalModel`) — memories,
//! feedback, adapter versions trained from it — over an engine.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyAny, PyDict};
use tailor::profile::{BertEmbedder, Embed, FeedbackKind, MemoryConfig, MemoryStore, NewFeedback, NewMemory};
use tailor::Flow;
use tailor_trainer::personal::{Decision, Outcome, PersonalOptions};
use tailor_trainer::PersonalModel;

use crate::convert::{from_py, record_to_py, to_py};
use crate::engine::{model_cache, params, PyEngine};
use crate::errors::{detach, Error, Kind, Result};

/// The profile store's file inside a profile directory (adapter versions go beside it, in
/// `profile.db.adapters/`).
pub const PROFILE_FILE: &str = "profile.db";

/// A profile opened for use.
#[pyclass(module = "tailor", name = "PersonalModel", frozen)]
pub struct PyPersonalModel {
    model: Arc<PersonalModel>,
}

/// Opens the profile in `dir` over `engine` with `embedder`; `auto_train`: the number of new
/// feedback events that starts a background training run (0: never).
pub(crate) fn open(dir: &Path, engine: &tailor::Engine, embedder: Arc<dyn Embed>, auto_train: usize) -> Result<PyPersonalModel> {
    std::fs::create_dir_all(dir).map_err(|e| Error::new(Kind::Io, format!("{}: {e}", dir.display())))?;
    let path = dir.join(PROFILE_FILE);
    let store = MemoryStore::open(&path, embedder, MemoryConfig::default())?;
    let model = PersonalModel::open(engine, store, &path)?;
    let mut auto = model.auto_train();
    auto.enabled = auto_train > 0;
    auto.min_new_feedback = auto_train.max(1);
    model.set_auto_train(auto);
    Ok(PyPersonalModel { model })
}

fn outcome_json(o: &Outcome) -> serde_json::Value {
    let (version, reason) = match &o.decision {
        Decision::Promoted { version, .. } => (Some(version.clone()), None),
        Decision::Refused { reason } => (None, Some(reason.clone())),
        _ => (None, None),
    };
    let m = &o.metrics;
    serde_json::json!({
        "promoted": o.promoted(),
        "version": version,
        "reason": reason,
        "summary": o.summary(),
        "held_out_before": o.held_out_before,
        "held_out_after": o.held_out_after,
        "held_out_in_sample": o.held_out_in_sample,
        "probes": o.probes,
        "probes_right_before": o.probes_right_before,
        "probes_right_after": o.probes_right_after,
        "specificity_base_right": o.specificity_base_right,
        "specificity_lost": o.specificity_lost,
        "margin_before": o.margin_before,
        "margin_after": o.margin_after,
        "general_before": o.general_before,
        "general_after": o.general_after,
        "train_examples": o.train_examples,
        "held_out_examples": o.held_out_examples,
        "replay_examples": o.replay_examples,
        "feedback_ids": o.feedback_ids,
        "steps": m.steps,
        "tokens_per_s": m.tokens_per_s,
        "seconds": m.elapsed.as_secs_f64(),
        "prepare_seconds": o.prepare_seconds,
        "gate_seconds": o.gate_seconds,
    })
}

/// The number in a version name `v{n}-{timestamp}`.
fn version_number(v: &str) -> Option<i64> {
    v.strip_prefix('v')?.split('-').next()?.parse().ok()
}

impl PyPersonalModel {
    fn store(&self) -> std::sync::MutexGuard<'_, MemoryStore> {
        self.model.store().lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The version named by `v`: a name, or the number `n` of `v{n}-...` (looked up in the store).
    fn resolve_version(&self, v: &VersionArg) -> Result<String> {
        let n = match v {
            VersionArg::Name(name) => return Ok(name.clone()),
            VersionArg::Number(n) => *n,
        };
        self.store()
            .list_adapters()?
            .into_iter()
            .map(|a| a.version)
            .find(|name| version_number(name) == Some(n))
            .ok_or_else(|| Error::new(Kind::NotFound, format!("no adapter version number {n} in this profile")))
    }
}

/// A version as `promote` takes it: its name or its number.
enum VersionArg {
    Name(String),
    Number(i64),
}

impl VersionArg {
    fn extract(v: &Bound<'_, PyAny>) -> Result<Self> {
        if let Ok(name) = v.extract::<String>() {
            return Ok(VersionArg::Name(name));
        }
        v.extract().map(VersionArg::Number).map_err(|_| Error::invalid("version: a version name (str) or number (int)"))
    }
}

#[pymethods]
impl PyPersonalModel {
    /// Opens (creating it if needed) the profile in directory `profile_dir` (its store is
    /// `profile.db` there) over `engine`, with the sentence embedder in `embedder_dir` (default:
    /// the cached all-MiniLM-L6-v2). `auto_train`: a background training run starts once this
    /// many new feedback events came in (as `tailor serve` does; 0: never).
    #[staticmethod]
    #[pyo3(signature = (profile_dir, engine, *, embedder_dir = None, auto_train = 3))]
    fn open(py: Python<'_>, profile_dir: PathBuf, engine: Bound<'_, PyEngine>, embedder_dir: Option<PathBuf>, auto_train: usize) -> PyResult<Self> {
        let e = engine.get();
        detach(py, move || {
            let dir = match embedder_dir {
                Some(d) => d,
                None => model_cache()?.embedder_dir(),
            };
            let embedder: Arc<dyn Embed> = Arc::new(BertEmbedder::load(&dir).map_err(|err| Error::from(err).context(&dir))?);
            open(&profile_dir, &e.engine, embedder, auto_train)
        })
    }

    /// The profile's store file.
    #[getter]
    fn profile_path(&self) -> String {
        self.model.profile_path().display().to_string()
    }

    /// The version running now (`None`: the base alone).
    #[getter]
    fn active_version(&self, py: Python<'_>) -> PyResult<Option<String>> {
        detach(py, || Ok(self.model.active_version()?))
    }

    /// Stores a memory; returns its id (an existing near-duplicate's id when it is one).
    fn remember(&self, py: Python<'_>, text: String) -> PyResult<i64> {
        detach(py, move || Ok(self.store().add(NewMemory::new(text))?.id))
    }

    /// Every memory, in id order: dicts with `id`, `text`, `metadata`, `created_at`, ...
    fn memories<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let all = detach(py, || {
            let store = self.store();
            let mut out = Vec::new();
            let mut after = None;
            loop {
                let page = store.list(after, 500)?;
                out.extend(page.memories);
                match page.next_after {
                    Some(a) => after = Some(a),
                    None => break,
                }
            }
            Ok(out)
        })?;
        record_to_py(py, &all)
    }

    /// Forgets a memory for good (the file, the full-text index and the vector index).
    fn forget(&self, py: Python<'_>, memory_id: i64) -> PyResult<()> {
        detach(py, || Ok(self.store().forget(memory_id)?))
    }

    /// Records feedback on an answer: exactly one of `correction` (what the answer should have
    /// been; mirrored into a memory at once), `thumbs` (+1 / -1) or `preferred` (a better
    /// answer, `answer` being the rejected one). Returns `{"id", "memory", "training_started"}`.
    #[pyo3(signature = (prompt, answer, *, correction = None, thumbs = None, preferred = None))]
    fn add_feedback<'py>(
        &self,
        py: Python<'py>,
        prompt: String,
        answer: String,
        correction: Option<String>,
        thumbs: Option<i32>,
        preferred: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let kind = match (correction, thumbs, preferred) {
            (Some(c), None, None) => FeedbackKind::Correction { corrected: c },
            (None, Some(t), None) if t > 0 => FeedbackKind::ThumbsUp,
            (None, Some(t), None) if t < 0 => FeedbackKind::ThumbsDown,
            (None, None, Some(p)) => FeedbackKind::Preference { chosen: p, rejected: answer.clone() },
            _ => return Err(Error::invalid("give exactly one of correction, thumbs (+1 or -1) or preferred").into()),
        };
        let (added, job) = detach(py, move || Ok(self.model.add_feedback(NewFeedback::new(prompt, answer, kind))?))?;
        let v = serde_json::json!({
            "id": added.id,
            "memory": serde_json::to_value(added.memory).map_err(Error::from)?,
            "training_started": job.is_some(),
        });
        Ok(to_py(py, &v)?)
    }

    /// Answers `prompt` as `tailor serve` does: the profile's active adapter, its memories in
    /// the prompt (greedy at temperature 0). `json_schema`, `regex`, `grammar`: as
    /// `Engine.generate`.
    #[pyo3(signature = (prompt, *, max_tokens = 128, temperature = 0.0, seed = 0, json_schema = None, regex = None, grammar = None))]
    #[allow(clippy::too_many_arguments)]
    fn ask(
        &self,
        py: Python<'_>,
        prompt: String,
        max_tokens: usize,
        temperature: f32,
        seed: u64,
        json_schema: Option<Bound<'_, PyAny>>,
        regex: Option<String>,
        grammar: Option<String>,
    ) -> PyResult<String> {
        let mut p = params(max_tokens, temperature, seed);
        p.grammar = crate::engine::grammar_arg(json_schema.as_ref(), regex, grammar)?;
        detach(py, move || {
            let mut session = self.model.new_session();
            Ok(session.chat(&prompt, &p, &mut |_| Flow::Continue)?.text)
        })
    }

    /// Trains a new adapter version from all the profile's feedback (on this thread, the GIL
    /// released) and promotes it if the evaluation gate accepts it. Options: the profile run's
    /// (`min_steps`, `paraphrases`, `distill`, `max_specificity_loss`, ...) and any training
    /// setting (`max_steps`, `learning_rate`, `lora_rank`, ...). Returns the outcome: `promoted`,
    /// `version`, `reason`, `summary` and the gate's figures.
    #[pyo3(signature = (**options))]
    fn train<'py>(&self, py: Python<'py>, options: Option<Bound<'py, PyDict>>) -> PyResult<Bound<'py, PyAny>> {
        let given = match options {
            Some(d) => match from_py(d.as_any(), "options")? {
                serde_json::Value::Object(m) => m,
                _ => serde_json::Map::new(),
            },
            None => serde_json::Map::new(),
        };
        let options = PersonalOptions::from_json(given).map_err(Error::from)?;
        let outcome = detach(py, move || {
            if self.model.training_job().is_some_and(|j| !j.is_finished()) {
                return Err(Error::new(Kind::Busy, "a training run of this profile is already going on"));
            }
            Ok(self.model.train(&options, &mut |_| Flow::Continue)?)
        })?;
        Ok(to_py(py, &outcome_json(&outcome))?)
    }

    /// The status of the current or last background run (`None`: none since open): `state`
    /// (`running`, `promoted`, `refused`, `cancelled`, `failed`), `step`, `version`, ...
    fn training_status<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match self.model.training_job() {
            Some(j) => record_to_py(py, &j.status()),
            None => Ok(py.None().into_bound(py)),
        }
    }

    /// Waits (the GIL released) for the background run, if any, and returns its final status.
    fn wait_training<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let status = detach(py, || Ok(self.model.training_job().map(|j| j.wait())))?;
        match status {
            Some(s) => record_to_py(py, &s),
            None => Ok(py.None().into_bound(py)),
        }
    }

    /// The adapter versions, oldest first: `version`, `number`, `parent`, `created_at`,
    /// `metrics`, `tainted_at`, `active`.
    fn versions<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (records, active) = detach(py, || {
            // One statement each: the store's lock guard must be dropped before
            // `active_version` takes the same (non-reentrant) lock.
            let records = self.store().list_adapters()?;
            let active = self.model.active_version()?;
            Ok((records, active))
        })?;
        let mut out = Vec::new();
        for r in records {
            let mut v = serde_json::to_value(&r).map_err(Error::from)?;
            if let serde_json::Value::Object(m) = &mut v {
                m.insert("number".into(), serde_json::json!(version_number(&r.version)));
                m.insert("active".into(), serde_json::json!(active.as_deref() == Some(r.version.as_str())));
            }
            out.push(v);
        }
        Ok(to_py(py, &serde_json::Value::Array(out))?)
    }

    /// Makes a version active (by name, or by its number: `2` for `v2-...`) and swaps it in.
    fn promote(&self, py: Python<'_>, version: Bound<'_, PyAny>) -> PyResult<()> {
        let version = VersionArg::extract(&version)?;
        detach(py, move || {
            // The store lock is taken with the GIL released (a training run may hold it).
            let name = self.resolve_version(&version)?;
            self.model.activate(&name)?;
            Ok(())
        })
    }

    /// Makes the active version's parent active (or the base alone); returns the version now
    /// active.
    fn rollback(&self, py: Python<'_>) -> PyResult<Option<String>> {
        detach(py, || Ok(self.model.rollback()?))
    }

    fn __repr__(&self) -> String {
        format!("PersonalModel({:?})", self.model.profile_path().display().to_string())
    }
}
