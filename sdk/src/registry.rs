//! The adapter registry of an engine: named LoRA adapters and steering vectors loaded once and
//! shared, an active weighted LoRA set and an active steering set, both swapped atomically
//! while sessions run. Sessions follow it with [`crate::Session::follow`].
//!
//! Swap semantics: every change publishes a new immutable snapshot (`Arc`s, no weight is
//! copied) under a new generation number. A session takes the snapshot when a generation
//! starts and keeps it to the end, so an output always comes from exactly one adapter set; the
//! next generation of every session picks the change up.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::path::Path;
use std::sync::{Arc, RwLock};

use serde::Serialize;
use tailor_adapters::peft::{self, LoadOptions};
use tailor_adapters::{LoraAdapter, SteeringVector};

use crate::decode::hooks::{HookSource, Hooks, ResidualHook};
use crate::engine::Engine;
use crate::lora::{LoraHook, PreparedLora};
use crate::steering::{SteeringHook, SteeringSet};
use crate::{Error, Result};

/// What the registry holds about one adapter.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdapterInfo {
    /// Its name in the registry.
    pub name: String,
    /// Its weight in the active set, if active.
    pub active_weight: Option<f32>,
    /// LoRA rank.
    pub rank: usize,
    /// Number of adapted (layer, projection) pairs.
    pub modules: usize,
    /// Trainable parameters.
    pub parameters: usize,
    /// The directory it was loaded from ([`AdapterRegistry::load`]); `None` when inserted from
    /// memory.
    pub source: Option<std::path::PathBuf>,
}

#[derive(Default)]
struct State {
    adapters: BTreeMap<String, Arc<PreparedLora>>,
    sources: BTreeMap<String, std::path::PathBuf>,
    active: Vec<(String, f32)>,
    vectors: BTreeMap<String, Arc<SteeringVector>>,
    steering: Vec<(String, f32, RangeInclusive<usize>)>,
    residual: Option<Arc<dyn ResidualHook>>,
    generation: u64,
    snapshot: Hooks,
}

impl State {
    fn publish(&mut self) {
        let entries: Vec<_> = self.active.iter().map(|(name, w)| (self.adapters[name].clone(), *w)).collect();
        let hook = LoraHook::new(&entries);
        let steer = SteeringSet::new(
            self.steering.iter().map(|(n, scale, layers)| SteeringHook::new(self.vectors[n].clone(), *scale, layers.clone())).collect(),
        );
        let residual: Option<Arc<dyn ResidualHook>> = match (&self.residual, steer.is_empty()) {
            (Some(r), _) => Some(r.clone()),
            (None, false) => Some(Arc::new(steer)),
            (None, true) => None,
        };
        self.snapshot = Hooks { linear: if hook.is_empty() { None } else { Some(Arc::new(hook)) }, residual };
        self.generation += 1;
    }
}

/// Named adapters for one engine, with the active set. `Send + Sync`; share it in an `Arc`.
pub struct AdapterRegistry {
    engine: Engine,
    state: RwLock<State>,
}

impl std::fmt::Debug for AdapterRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdapterRegistry").field("adapters", &self.list()).finish()
    }
}

impl AdapterRegistry {
    /// An empty registry for `engine`'s base.
    pub fn new(engine: &Engine) -> Arc<Self> {
        Arc::new(Self { engine: engine.clone(), state: RwLock::new(State::default()) })
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Loads a PEFT adapter directory under `name` (inactive), checking its shapes against the
    /// base and, when it records one, the base fingerprint. Replaces an adapter of that name
    /// (an active one stays active with the new weights).
    pub fn load(&self, name: &str, dir: &Path) -> Result<()> {
        let opts = LoadOptions::new().with_shapes(self.engine.base_shapes()).with_fingerprint(self.engine.base_fingerprint());
        let adapter = peft::load(dir, &opts)?;
        self.insert_from(name, adapter, Some(dir))
    }

    /// Adds an adapter built in memory (e.g. by the trainer) under `name`, after checking its
    /// shapes against the base and preparing it (the only copy of its weights a swap makes).
    pub fn insert(&self, name: &str, adapter: LoraAdapter) -> Result<()> {
        self.insert_from(name, adapter, None)
    }

    fn insert_from(&self, name: &str, adapter: LoraAdapter, source: Option<&Path>) -> Result<()> {
        let prepared = Arc::new(PreparedLora::new(&self.engine, Arc::new(adapter))?);
        let mut st = self.write();
        match source {
            Some(dir) => st.sources.insert(name.to_string(), dir.to_path_buf()),
            None => st.sources.remove(name),
        };
        let active = st.active.iter().any(|(n, _)| n == name);
        st.adapters.insert(name.to_string(), prepared);
        if active {
            st.publish();
        }
        Ok(())
    }

    /// The adapter held under `name` (PEFT's row order), to save or export it.
    pub fn get(&self, name: &str) -> Option<Arc<LoraAdapter>> {
        self.read().adapters.get(name).map(|p| p.adapter().clone())
    }

    /// Makes `set` (names with weights) the active set, atomically. Unknown names are an error
    /// and change nothing. An empty set means the base model.
    pub fn activate(&self, set: &[(&str, f32)]) -> Result<()> {
        let mut st = self.write();
        for (name, w) in set {
            if !st.adapters.contains_key(*name) {
                return Err(Error::invalid(format!("no adapter named `{name}`")));
            }
            if !w.is_finite() {
                return Err(Error::invalid(format!("adapter `{name}`: weight {w} is not finite")));
            }
        }
        st.active = set.iter().map(|(n, w)| (n.to_string(), *w)).collect();
        st.publish();
        Ok(())
    }

    /// Sets one adapter's weight in the active set (`None`: takes it out), keeping the other
    /// members as they are, atomically. An unknown name or a non-finite weight is an error and
    /// changes nothing.
    pub fn set_weight(&self, name: &str, weight: Option<f32>) -> Result<()> {
        let mut st = self.write();
        if !st.adapters.contains_key(name) {
            return Err(Error::invalid(format!("no adapter named `{name}`")));
        }
        let pos = st.active.iter().position(|(n, _)| n == name);
        match (weight, pos) {
            (Some(w), _) if !w.is_finite() => return Err(Error::invalid(format!("adapter `{name}`: weight {w} is not finite"))),
            (Some(w), Some(i)) => st.active[i].1 = w,
            (Some(w), None) => st.active.push((name.to_string(), w)),
            (None, Some(i)) => {
                st.active.remove(i);
            }
            (None, None) => return Ok(()),
        }
        st.publish();
        Ok(())
    }

    /// Removes an adapter (and from the active set if it was there). Generations that took a
    /// snapshot with it finish with it; its memory is freed after them.
    pub fn unload(&self, name: &str) -> Result<()> {
        let mut st = self.write();
        if st.adapters.remove(name).is_none() {
            return Err(Error::invalid(format!("no adapter named `{name}`")));
        }
        st.sources.remove(name);
        let before = st.active.len();
        st.active.retain(|(n, _)| n != name);
        if st.active.len() != before {
            st.publish();
        }
        Ok(())
    }

    /// Adds a steering vector under `name` (inactive), after checking it against the base
    /// (fingerprint when it records one, width). Replaces a vector of that name (an active one
    /// stays active with the new directions).
    pub fn insert_steering(&self, name: &str, vector: SteeringVector) -> Result<()> {
        vector.check_base(self.engine.base_fingerprint().as_str(), self.engine.model_config().d_model)?;
        let mut st = self.write();
        st.vectors.insert(name.to_string(), Arc::new(vector));
        if st.steering.iter().any(|(n, _, _)| n == name) {
            st.publish();
        }
        Ok(())
    }

    /// Makes `set` (vector names with scales and the blocks they apply after) the active
    /// steering set, atomically. Unknown names, non-finite scales and layers past the model are
    /// errors and change nothing. An empty set means no steering.
    pub fn activate_steering(&self, set: &[(&str, f32, RangeInclusive<usize>)]) -> Result<()> {
        let n_layers = self.engine.model_config().n_layers;
        let mut st = self.write();
        for (name, scale, layers) in set {
            if !st.vectors.contains_key(*name) {
                return Err(Error::invalid(format!("no steering vector named `{name}`")));
            }
            if !scale.is_finite() {
                return Err(Error::invalid(format!("steering `{name}`: scale {scale} is not finite")));
            }
            if layers.is_empty() || *layers.end() >= n_layers {
                return Err(Error::invalid(format!("steering `{name}`: layers {layers:?} outside 0..{n_layers}")));
            }
        }
        st.steering = set.iter().map(|(n, s, l)| (n.to_string(), *s, l.clone())).collect();
        st.publish();
        Ok(())
    }

    /// Removes a steering vector (and from the active steering set if it was there).
    pub fn unload_steering(&self, name: &str) -> Result<()> {
        let mut st = self.write();
        if st.vectors.remove(name).is_none() {
            return Err(Error::invalid(format!("no steering vector named `{name}`")));
        }
        let before = st.steering.len();
        st.steering.retain(|(n, _, _)| n != name);
        if st.steering.len() != before {
            st.publish();
        }
        Ok(())
    }

    /// The steering vectors held, by name, with the scale of the active ones.
    pub fn list_steering(&self) -> Vec<(String, Option<f32>)> {
        let st = self.read();
        st.vectors.keys().map(|n| (n.clone(), st.steering.iter().find(|(m, _, _)| m == n).map(|(_, s, _)| *s))).collect()
    }

    /// Sets (or clears) a custom residual hook that runs with the active set, in place of the
    /// named steering set while it is set.
    pub fn set_residual(&self, hook: Option<Arc<dyn ResidualHook>>) {
        let mut st = self.write();
        st.residual = hook;
        st.publish();
    }

    /// The adapters held, by name.
    pub fn list(&self) -> Vec<AdapterInfo> {
        let st = self.read();
        st.adapters
            .iter()
            .map(|(name, p)| (name, p.adapter()))
            .map(|(name, a)| AdapterInfo {
                name: name.clone(),
                active_weight: st.active.iter().find(|(n, _)| n == name).map(|(_, w)| *w),
                rank: a.config().r,
                modules: a.len(),
                parameters: a.num_parameters(),
                source: st.sources.get(name).cloned(),
            })
            .collect()
    }

    /// The generation number of the current snapshot.
    pub fn generation(&self) -> u64 {
        self.read().generation
    }
}

impl HookSource for AdapterRegistry {
    fn snapshot(&self) -> (u64, Hooks) {
        let st = self.read();
        (st.generation, st.snapshot.clone())
    }
}
