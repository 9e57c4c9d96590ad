//! Bad input gives clear errors and loses nothing.

use tailor_memory::{Error, ErrorKind, MemoryConfig, MemoryStore, NewMemory, SearchQuery};
use tailor_memory::testing::HashEmbedder;

use crate::common::*;

#[test]
fn empty_huge_and_bad_metadata_are_refused_without_side_effects() {
    let dir = tmp_dir("bad-text");
    let mut s = hash_store(&dir, 16, MemoryConfig::default());
    let keep = s.add(NewMemory::new("keep me")).unwrap().id;
    assert!(matches!(s.add(NewMemory::new("")), Err(Error::EmptyText)));
    assert!(matches!(s.add(NewMemory::new(" \n\t ")), Err(Error::EmptyText)));
    let huge = "x".repeat(MemoryConfig::default().max_text_bytes + 1);
    let e = s.add(NewMemory::new(huge)).unwrap_err();
    assert!(matches!(e, Error::TextTooLong { .. }) && e.kind() == ErrorKind::InvalidArgument, "{e}");
    let e = NewMemory::new("ok").metadata_json("{not json").unwrap_err();
    assert!(matches!(e, Error::InvalidMetadata { .. }), "{e}");
    assert!(matches!(s.add(NewMemory::new("ok").metadata(serde_json::json!([1, 2]))), Err(Error::InvalidMetadata { .. })));
    // One bad item fails the whole batch.
    assert!(s.add_many(vec![NewMemory::new("fine"), NewMemory::new("")]).is_err());
    assert!(matches!(s.search(&SearchQuery::new("  ", 3)), Err(Error::InvalidArgument { .. })));
    assert_eq!(s.len().unwrap(), 1);
    assert_eq!(s.get(keep).unwrap().text, "keep me");
    assert!(matches!(s.update(12345, tailor_memory::MemoryUpdate::text("x")), Err(Error::MemoryNotFound { id: 12345 })));
}

fn open(path: &std::path::Path) -> tailor_memory::Result<MemoryStore> {
    MemoryStore::open(path, std::sync::Arc::new(HashEmbedder::new(16, 1)), MemoryConfig::default())
}

#[test]
fn foreign_and_non_database_files_are_refused_untouched() {
    let dir = tmp_dir("bad-files");
    let text = dir.join("notes.db");
    std::fs::write(&text, "this is a text file, not a database\n".repeat(200)).unwrap();
    let e = open(&text).err().unwrap();
    assert!(matches!(e, Error::NotADatabase { .. }) && e.kind() == ErrorKind::CorruptData, "{e}");
    assert_eq!(std::fs::read_to_string(&text).unwrap(), "this is a text file, not a database\n".repeat(200));

    let foreign = dir.join("other.sqlite");
    make_foreign(&foreign);
    let before = std::fs::read(&foreign).unwrap();
    let e = open(&foreign).err().unwrap();
    assert!(matches!(e, Error::ForeignDatabase { .. }), "{e}");
    assert_eq!(std::fs::read(&foreign).unwrap(), before);
    let e = open(&dir).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    let e = open(&dir.join("missing-dir/p.db")).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
}

/// A valid SQLite file of another application: a profile whose header's application_id
/// (offset 68) is patched to 0x12345678.
fn make_foreign(path: &std::path::Path) {
    let tmp = path.with_extension("tmp");
    drop(open(&tmp).unwrap());
    let mut bytes = std::fs::read(&tmp).unwrap();
    bytes[68..72].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn corrupt_database_is_an_error_and_not_overwritten() {
    let dir = tmp_dir("bad-corrupt");
    let path = dir.join("profile.db");
    {
        let mut s = open(&path).unwrap();
        s.add_many((0..300).map(|i| NewMemory::new(format!("memory {i} with some text to fill pages"))).collect()).unwrap();
    }
    // Header damage: not a database any more.
    let good = std::fs::read(&path).unwrap();
    let mut bad = good.clone();
    bad[..16].copy_from_slice(b"garbage garbage!");
    std::fs::write(&path, &bad).unwrap();
    let e = open(&path).err().unwrap();
    assert!(matches!(e, Error::NotADatabase { .. }), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), bad);

    // Page damage: either open refuses or integrity_check reports it; never a panic.
    let mut bad = good.clone();
    let page = 4096;
    for b in &mut bad[2 * page..2 * page + 512] {
        *b = 0xA5;
    }
    std::fs::write(&path, &bad).unwrap();
    match open(&path) {
        Err(e) => assert_eq!(e.kind(), ErrorKind::CorruptData, "{e}"),
        Ok(s) => assert!(s.integrity_check().is_err(), "damaged pages not detected"),
    }
}
