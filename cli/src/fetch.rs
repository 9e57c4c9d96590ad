//! `tailor models fetch`: the pinned model files, with progress bars.

use std::collections::HashMap;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use tailor::model_files::{FetchEvent, FetchOptions, TrustRoots};

/// Downloads what is missing. The index is `--index-url`, else `$PIP_INDEX_URL` (so a machine
/// whose pip uses a mirror fetches from it too), else pypi.org; `$HTTPS_PROXY` and
/// `$SSL_CERT_FILE` are honoured as pip honours them.
pub(crate) fn fetch(index_url: Option<String>) -> Result<()> {
    let cache = crate::model_cache()?;
    let mut opts = FetchOptions::default();
    if let Some(url) = index_url.or_else(|| std::env::var("PIP_INDEX_URL").ok().filter(|s| !s.is_empty())) {
        opts = opts.with_index_url(url);
    }
    if let Some(p) = ["HTTPS_PROXY", "https_proxy"].iter().find_map(|k| std::env::var(k).ok().filter(|s| !s.is_empty())) {
        opts = opts.with_proxy(p);
    }
    if let Some(cert) = std::env::var_os("SSL_CERT_FILE").filter(|s| !s.is_empty()) {
        opts = opts.with_trust_roots(TrustRoots::PemFile(cert.into()));
    }
    eprintln!("model cache: {}", cache.root().display());
    let style = ProgressStyle::with_template("{msg:40} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
        .expect("valid template")
        .progress_chars("=> ");
    let mut bars: HashMap<String, ProgressBar> = HashMap::new();
    let report = cache.fetch(&opts, &mut |ev| match ev {
        FetchEvent::Skipped { file } => eprintln!("present  {file}"),
        FetchEvent::DownloadStarted { file, total_bytes, .. } => {
            let pb = ProgressBar::new(total_bytes).with_style(style.clone()).with_message(file.to_string());
            bars.insert(file.to_string(), pb);
        }
        FetchEvent::DownloadProgress { file, bytes, .. } => {
            if let Some(pb) = bars.get(file) {
                pb.set_position(bytes);
            }
        }
        FetchEvent::DownloadFailed { file, url, reason } => {
            if let Some(pb) = bars.remove(file) {
                pb.abandon();
            }
            eprintln!("failed   {url}: {reason} (trying the next source)");
        }
        FetchEvent::Downloaded { file } => {
            if let Some(pb) = bars.remove(file) {
                pb.finish();
            }
        }
        FetchEvent::Unpacked { file, bytes } => eprintln!("unpacked {file} ({:.1} MB)", bytes as f64 / 1e6),
        _ => {}
    })?;
    if report.is_noop() {
        eprintln!("all model files present and verified");
    } else {
        eprintln!("downloaded {:.1} MB; model files verified", report.bytes_downloaded as f64 / 1e6);
    }
    println!("{}", cache.base_model_path().display());
    Ok(())
}
