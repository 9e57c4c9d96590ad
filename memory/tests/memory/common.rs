//! Shared helpers.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tailor_memory::testing::HashEmbedder;
use tailor_memory::{BertEmbedder, MemoryConfig, MemoryStore};

/// A fresh empty directory under the system temp dir.
pub fn tmp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tailor-memory-tests-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A store on a fresh file with a hash embedder of dimension `dim`.
pub fn hash_store(dir: &Path, dim: usize, config: MemoryConfig) -> MemoryStore {
    MemoryStore::open(dir.join("profile.db"), Arc::new(HashEmbedder::new(dim, 1)), config).unwrap()
}

/// A seed that differs on every run, printed so a failure can be replayed.
pub fn fresh_seed(what: &str) -> u64 {
    let seed = std::env::var("TAILOR_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("{what}: seed {seed} (set TAILOR_TEST_SEED to replay)");
    seed
}

/// The all-MiniLM-L6-v2 folder in Tailor's model cache (`$TAILOR_HOME`, default
/// `~/.cache/tailor`).
pub fn minilm_dir() -> PathBuf {
    let home = std::env::var_os("TAILOR_HOME").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/tailor")
    });
    let dir = home.join("models/all-minilm-l6-v2");
    assert!(
        dir.join("model.safetensors").is_file(),
        "the embedder is not in the model cache ({}); run `tailor models fetch` first",
        dir.display()
    );
    dir
}

/// The real embedder, loaded once per test binary.
pub fn minilm() -> Arc<BertEmbedder> {
    static ONCE: std::sync::OnceLock<Arc<BertEmbedder>> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| Arc::new(BertEmbedder::load(minilm_dir()).expect("load all-MiniLM-L6-v2"))).clone()
}

/// Does the file at `path` (plus its `-wal`) contain `needle`?
pub fn file_contains(path: &Path, needle: &[u8]) -> bool {
    let mut hay = std::fs::read(path).unwrap_or_default();
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    hay.extend(std::fs::read(PathBuf::from(wal)).unwrap_or_default());
    hay.windows(needle.len()).any(|w| w == needle)
}
