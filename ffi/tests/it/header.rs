//! The committed `include/tailor.h` is what cbindgen makes from the sources now, and every
//! exported symbol is `tailor_`/`Tailor`/`TAILOR_` prefixed.
//!
//! Regenerate it with `TAILOR_BLESS=1 cargo test --release -p tailor-ffi --test it header`.

use std::path::PathBuf;

fn generate() -> String {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let bindings = cbindgen::Builder::new().with_crate(&dir).with_config(config).generate().expect("cbindgen generates the header");
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).expect("UTF-8 header")
}

#[test]
fn header_is_up_to_date() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("include/tailor.h");
    let fresh = generate();
    if std::env::var_os("TAILOR_BLESS").is_some() {
        std::fs::write(&path, &fresh).expect("write the header");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "ffi/include/tailor.h is out of date with ffi/src; regenerate it with \
         `TAILOR_BLESS=1 cargo test --release -p tailor-ffi --test it header` and commit it"
    );
}

#[test]
fn every_symbol_is_prefixed() {
    let header = generate();
    let mut functions = 0;
    for line in header.lines() {
        let line = line.trim();
        if line.starts_with("//") || line.starts_with("/*") || line.starts_with('*') || line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("#define ") {
            let name = rest.split_whitespace().next().unwrap_or("");
            assert!(name.starts_with("TAILOR_"), "macro `{name}` is not TAILOR_ prefixed");
        }
        if let Some(rest) = line.strip_prefix("typedef ") {
            // `typedef T (*Name)(args);` names a function pointer; otherwise the last word.
            let decl = match rest.find("(*") {
                Some(i) => &rest[i + 2..rest[i..].find(')').map_or(rest.len(), |j| i + j)],
                None => rest.trim_end_matches(';'),
            };
            let name = decl.split(|c: char| !c.is_alphanumeric() && c != '_').rfind(|s| !s.is_empty()).unwrap_or("");
            assert!(name.starts_with("Tailor"), "type `{name}` is not Tailor prefixed: {line}");
        }
        // A function declaration: `ret name(args...`.
        if let Some(open) = line.find('(') {
            if !line.starts_with("typedef") && !line.starts_with('#') && !line.starts_with("extern") {
                let name = line[..open].rsplit([' ', '*']).next().unwrap_or("");
                if !name.is_empty() {
                    functions += 1;
                    assert!(name.starts_with("tailor_"), "function `{name}` is not tailor_ prefixed: {line}");
                }
            }
        }
    }
    assert!(functions >= 20, "only {functions} functions found in the header");
    assert!(header.contains("tailor_abi_version"));
}
