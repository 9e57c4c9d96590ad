//! `PersonalModel`: background training with status and cancel, the promoted version hot-swapped
//! into sessions that are running, forgetting during and after a run.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use candle_core::quantized::GgmlDType;
use tailor::profile::testing::HashEmbedder;
use tailor::profile::{FeedbackKind, MemoryConfig, MemoryStore, NewFeedback};
use tailor_trainer::personal::{Error, PersonalOptions};
use tailor_trainer::{Flow, JobState, PersonalModel};

use crate::common::{tiny, TempDir};

fn open(engine: &tailor::Engine, dir: &TempDir) -> Arc<PersonalModel> {
    let path = dir.path("me.db");
    let store = MemoryStore::open(&path, Arc::new(HashEmbedder::new(16, 0)), MemoryConfig::default()).unwrap();
    PersonalModel::open(engine, store, &path).unwrap()
}

fn options(steps: usize) -> PersonalOptions {
    let mut o = PersonalOptions::default();
    o.train.lora_rank = 4;
    o.train.lora_alpha = 8.0;
    o.train.learning_rate = 3e-3;
    o.train.max_steps = Some(steps);
    o.train.seed = 7;
    o.train.threads = 2;
    o.checkpoint_every = 1;
    // Tiny random models: a few distillation answers, no specificity set (they know nothing),
    // and the old 5% general-text limit these small runs were tuned for.
    o.distill = 4;
    o.distill_tokens = 8;
    o.max_specificity_loss = None;
    o.max_general_increase = 0.05;
    o
}

fn add_facts(pm: &PersonalModel) -> Vec<i64> {
    let mut s = pm.store().lock().unwrap();
    (0..6)
        .map(|i| {
            let kind = FeedbackKind::Correction { corrected: "Zorblax.".into() };
            s.add_feedback(NewFeedback::new(format!("what is my cat called? ({i})"), "Tom.", kind)).unwrap()
        })
        .collect()
}

#[test]
fn background_training_is_swapped_into_running_sessions() {
    let (_m, engine) = tiny(GgmlDType::Q8_0, 3);
    let dir = TempDir::new("pm-swap");
    let pm = open(&engine, &dir);
    assert_eq!(pm.active_version().unwrap(), None);
    let probe = engine.tokenize("my cat is called").unwrap();
    let mut running = pm.new_session();
    let base = running.logits_all(&probe).unwrap();
    add_facts(&pm);

    let steps = Arc::new(AtomicUsize::new(0));
    let seen = steps.clone();
    let job = pm
        .start_training_with(
            options(12),
            Box::new(move |p| {
                seen.store(p.step, Ordering::SeqCst);
                Flow::Continue
            }),
        )
        .unwrap();
    // One run per profile at a time.
    assert!(matches!(pm.start_training(options(12)), Err(Error::Busy)) || job.is_finished());
    let done = job.wait();
    assert_eq!(done.state, JobState::Promoted, "{done:?}");
    assert_eq!(steps.load(Ordering::SeqCst), 12);
    assert_eq!((done.step, done.total_steps), (12, 12));
    assert!(done.held_out_after.unwrap() < done.held_out_before.unwrap());
    let json = serde_json::to_value(&done).unwrap();
    assert_eq!(json["state"], "promoted");
    assert_eq!(json["version"].as_str(), done.version.as_deref());
    assert_eq!(pm.active_version().unwrap(), done.version);
    assert_eq!(pm.registry().list()[0].name, PersonalModel::ADAPTER_NAME);

    // The session made before the run now runs the new version; so does a new one.
    let tuned = running.logits_all(&probe).unwrap();
    assert_ne!(tuned, base);
    assert_eq!(pm.new_session().logits_all(&probe).unwrap(), tuned);
    // A second profile object over the same file starts with that version.
    drop(running);
    let version = done.version.clone();
    drop(pm);
    let again = open(&engine, &dir);
    assert_eq!(again.active_version().unwrap(), version);
    assert_eq!(again.new_session().logits_all(&probe).unwrap(), tuned);

    // Forgetting everything: the version is deleted and the base runs again.
    let removed = again.forget_all_feedback().unwrap();
    assert_eq!(removed, vec![version.unwrap()]);
    assert!(again.registry().list().is_empty());
    assert_eq!(again.new_session().logits_all(&probe).unwrap(), base);
    // Nothing left to train on: the job fails with a typed reason, not a panic.
    let failed = again.start_training(options(12)).unwrap().wait();
    assert_eq!(failed.state, JobState::Failed);
    assert_eq!(failed.error_kind.as_deref(), Some("NoFeedback"));
}

#[test]
fn cancel_leaves_a_checkpoint_and_forgetting_mid_run_refuses() {
    let (_m, engine) = tiny(GgmlDType::Q8_0, 2);
    let dir = TempDir::new("pm-cancel");
    let pm = open(&engine, &dir);
    let ids = add_facts(&pm);

    // Cancelled from another thread once a few steps are done.
    let job = pm.start_training(options(40)).unwrap();
    while job.status().step < 3 && !job.is_finished() {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    job.cancel();
    let st = job.wait();
    assert_eq!(st.state, JobState::Cancelled, "{st:?}");
    assert!(st.step >= 3 && st.step < 40);
    assert!(pm.adapters_dir().join(tailor_trainer::personal::CHECKPOINT_DIR).exists());
    assert_eq!(pm.active_version().unwrap(), None);

    // Stopped by its progress callback: cancelled too (not a refusal by the gate).
    let st = pm.start_training_with(options(40), Box::new(|p| if p.step >= 2 { Flow::Stop } else { Flow::Continue })).unwrap().wait();
    assert_eq!(st.state, JobState::Cancelled, "{st:?}");

    // Feedback forgotten while a run trains: the run's version learned it, so it is refused.
    let pm2 = pm.clone();
    let forgot = Arc::new(AtomicUsize::new(0));
    let f2 = forgot.clone();
    let job = pm
        .start_training_with(
            options(12),
            Box::new(move |p| {
                if p.step == 8 && f2.load(Ordering::SeqCst) == 0 {
                    pm2.forget_feedback(&ids[..1]).unwrap();
                    f2.store(1, Ordering::SeqCst);
                }
                Flow::Continue
            }),
        )
        .unwrap();
    let st = job.wait();
    assert_eq!(forgot.load(Ordering::SeqCst), 1);
    assert_eq!(st.state, JobState::Refused, "{st:?}");
    assert!(st.message.unwrap().contains("forgotten"));
    assert!(pm.store().lock().unwrap().list_adapters().unwrap().is_empty());
    assert!(pm.registry().list().is_empty());
}

/// Feedback through `PersonalModel::add_feedback` starts a background run once enough new
/// events came in (not for the same events twice, never two at once, not when switched off),
/// and the run yields while a generation runs.
#[test]
fn feedback_starts_a_background_run_when_enough_came_in() {
    let (_m, engine) = tiny(GgmlDType::Q8_0, 5);
    let dir = TempDir::new("pm-auto");
    let pm = open(&engine, &dir);
    let mut auto = tailor_trainer::AutoTrain::default();
    auto.min_new_feedback = 2;
    auto.options = options(6);
    pm.set_auto_train(auto.clone());
    let correction = |i: usize| {
        NewFeedback::new(format!("what is my cat called? ({i})"), "Tom.", FeedbackKind::Correction { corrected: "Zorblax.".into() })
    };
    let (first, job) = pm.add_feedback(correction(0)).unwrap();
    assert!(job.is_none(), "one event is below the threshold");
    assert!(first.memory.is_some(), "a correction is mirrored into a memory at once");
    let (_, job) = pm.add_feedback(correction(1)).unwrap();
    let job = job.expect("the second event starts a run");
    // While it runs, more feedback starts nothing (one run at a time).
    let (_, again) = pm.add_feedback(correction(2)).unwrap();
    assert!(again.is_none());
    let st = job.wait();
    assert!(matches!(st.state, JobState::Promoted | JobState::Refused), "{st:?}");
    assert!(st.summary.is_some());
    // The events it was started on do not start it again; switched off, nothing starts.
    assert!(pm.maybe_train().unwrap().is_none());
    auto.enabled = false;
    pm.set_auto_train(auto);
    for i in 3..6 {
        assert!(pm.add_feedback(correction(i)).unwrap().1.is_none());
    }
}
