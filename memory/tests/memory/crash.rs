//! Crash safety: a child process adding (and forgetting) memories is SIGKILLed at random
//! points; after each kill the database passes `integrity_check`, every memory the child
//! reported committed is present and searchable, and nothing it reported forgotten is back.
//!
//! The child is this test binary re-executed with `TAILOR_MEMORY_CRASH_CHILD` set.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use tailor_memory::testing::HashEmbedder;
use tailor_memory::{MemoryConfig, MemoryStore, NewMemory, SearchMode, SearchQuery};

use crate::common::*;

const CHILD_ENV: &str = "TAILOR_MEMORY_CRASH_CHILD";

fn config() -> MemoryConfig {
    let mut c = MemoryConfig::default();
    // Small enough that the HNSW path and the saved graph are exercised too.
    c.index.exact_below = 50;
    c
}

fn open(path: &std::path::Path) -> MemoryStore {
    MemoryStore::open(path, Arc::new(HashEmbedder::new(32, 7)), config()).unwrap()
}

/// The child's work loop (a no-op unless run as the child).
#[test]
fn crash_child() {
    let Some(path) = std::env::var_os(CHILD_ENV) else { return };
    let path = std::path::PathBuf::from(path);
    let round: u64 = std::env::var("TAILOR_MEMORY_CRASH_ROUND").unwrap().parse().unwrap();
    let mut s = open(&path);
    let mut out = std::io::stdout().lock();
    let mut rng = rand::rngs::StdRng::seed_from_u64(round);
    for i in 0.. {
        match rng.random_range(0..10) {
            0 => {
                // Forget one of ours (the parent knows which ones are committed).
                let page = s.list(None, 1).unwrap();
                if let Some(m) = page.memories.first() {
                    // Announced first: a kill between the commit and "FORGOT" leaves it either way.
                    writeln!(out, "FORGETTING {}", m.id).unwrap();
                    out.flush().unwrap();
                    s.forget(m.id).unwrap();
                    writeln!(out, "FORGOT {}", m.id).unwrap();
                }
            }
            1 => {
                let batch: Vec<NewMemory> = (0..5).map(|j| NewMemory::new(format!("round {round} item {i} batch {j}"))).collect();
                // Printed after the commit, so every printed id is committed.
                for (j, o) in s.add_many(batch).unwrap().into_iter().enumerate() {
                    writeln!(out, "ADDED {} round {round} item {i} batch {j}", o.id).unwrap();
                }
            }
            2 if i % 7 == 0 => {
                s.persist_index().unwrap();
            }
            _ => {
                let text = format!("round {round} item {i}");
                let o = s.add(NewMemory::new(&text)).unwrap();
                writeln!(out, "ADDED {} {text}", o.id).unwrap();
            }
        }
        out.flush().unwrap();
    }
}

#[test]
fn killed_child_never_loses_committed_or_resurrects_forgotten() {
    let seed = fresh_seed("crash");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tmp_dir("crash");
    let path = dir.join("p.db");
    drop(open(&path));
    let exe = std::env::current_exe().unwrap();
    // Expected state: id -> Some(text) committed, None forgotten. Ids being forgotten when a
    // child was killed may be in either state, and are dropped from the map.
    let mut expected: BTreeMap<i64, Option<String>> = BTreeMap::new();
    for round in 0..20u64 {
        let mut child = Command::new(&exe)
            .args(["crash::crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &path)
            .env("TAILOR_MEMORY_CRASH_ROUND", (seed.wrapping_add(round)).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout).lines().map_while(Result::ok).collect::<Vec<String>>()
        });
        std::thread::sleep(Duration::from_millis(rng.random_range(30..400)));
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        let lines = reader.join().unwrap();
        for line in &lines {
            if let Some(rest) = line.strip_prefix("ADDED ") {
                let (id, text) = rest.split_once(' ').unwrap();
                expected.insert(id.parse().unwrap(), Some(text.to_string()));
            } else if let Some(id) = line.strip_prefix("FORGETTING ") {
                expected.remove(&id.parse().unwrap());
            } else if let Some(id) = line.strip_prefix("FORGOT ") {
                expected.insert(id.parse().unwrap(), None);
            }
        }

        let mut s = open(&path);
        s.integrity_check().unwrap_or_else(|e| panic!("round {round}: {e}"));
        let n_committed = expected.values().filter(|v| v.is_some()).count();
        for (id, state) in &expected {
            match state {
                Some(text) => {
                    let m = s.get(*id).unwrap_or_else(|e| panic!("round {round}: committed memory {id} lost: {e}"));
                    assert_eq!(&m.text, text);
                    let hits = s.search(&SearchQuery::new(&m.text, 1).mode(SearchMode::Vector).track_access(false)).unwrap();
                    assert_eq!(hits.first().map(|h| h.memory.id), Some(*id), "round {round}: {id} not searchable");
                }
                None => {
                    assert!(s.get(*id).is_err(), "round {round}: forgotten memory {id} came back");
                    let hits = s.search(&SearchQuery::new(format!("{id}"), 50).track_access(false)).unwrap();
                    assert!(hits.iter().all(|h| h.memory.id != *id));
                }
            }
        }
        eprintln!("round {round}: {} lines from child, {n_committed} committed memories checked", lines.len());
    }
    assert!(expected.values().filter(|v| v.is_some()).count() > 20, "the child committed too little to test anything");
}
