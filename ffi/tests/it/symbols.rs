//! The shared library exports every function the header declares, and nothing else of ours.

use std::collections::BTreeSet;
use std::process::Command;

use crate::support::{crate_dir, lib_dir, which};

/// Functions exported by hnsw_rs's own C API (`libext.rs`), which a Rust cdylib cannot hide:
/// rustc lists every `#[no_mangle]` function of every crate in its export list.
fn from_hnsw_rs(name: &str) -> bool {
    name.contains("hnsw")
        || ["insert_", "parallel_insert_", "search_neighbours_", "parallel_search_neighbours_", "file_dump_"]
            .iter()
            .any(|p| name.starts_with(p))
        || name == "init_rust_log"
}

/// Functions of llguidance's C API (`llg_*`, its `ffi` module; the grammar engine of
/// structured outputs), exported for the same reason.
fn from_llguidance(name: &str) -> bool {
    name.starts_with("llg_")
}

#[test]
fn exports_match_the_header() {
    if cfg!(target_arch = "aarch64") || !which("nm") {
        eprintln!("NOTICE: nm missing (or cross build); exports_match_the_header skipped");
        return;
    }
    let out = Command::new("nm").args(["-D", "--defined-only"]).arg(lib_dir().join("libtailor_ffi.so")).output().expect("nm");
    assert!(out.status.success());
    let exported: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, kind, name) = (f.next()?, f.next()?, f.next()?);
            (kind == "T").then(|| name.to_string())
        })
        .collect();
    let header = std::fs::read_to_string(crate_dir().join("include/tailor.h")).expect("header");
    let declared: BTreeSet<String> = header
        .lines()
        .filter(|l| !l.starts_with("//") && !l.starts_with("typedef") && !l.starts_with('#') && !l.starts_with(' '))
        .filter_map(|l| {
            let open = l.find('(')?;
            let name = l[..open].rsplit([' ', '*']).next()?;
            name.starts_with("tailor_").then(|| name.to_string())
        })
        .collect();
    assert!(declared.len() >= 50, "{declared:?}");
    let ours: BTreeSet<String> = exported.iter().filter(|n| !from_hnsw_rs(n) && !from_llguidance(n)).cloned().collect();
    assert_eq!(ours, declared, "exported (left) vs declared in tailor.h (right)");
}
