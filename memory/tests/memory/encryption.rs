//! Encryption at rest (cargo feature `encryption`, SQLCipher).

use std::sync::Arc;

use tailor_memory::testing::HashEmbedder;
use tailor_memory::{EncryptionKey, Error, ErrorKind, MemoryConfig, MemoryStore, NewMemory, SearchQuery};

use crate::common::*;

fn open(path: &std::path::Path, key: &EncryptionKey) -> tailor_memory::Result<MemoryStore> {
    MemoryStore::open_encrypted(path, key, Arc::new(HashEmbedder::new(16, 3)), MemoryConfig::default())
}

#[test]
fn encrypted_profile_hides_plaintext_and_refuses_wrong_key() {
    assert!(tailor_memory::ENCRYPTION_AVAILABLE);
    let dir = tmp_dir("enc");
    let path = dir.join("p.db");
    let key = EncryptionKey::Passphrase("correct horse battery staple".into());
    let id = {
        let mut s = open(&path, &key).unwrap();
        let id = s.add(NewMemory::new("my therapist is Dr. Quimby-Fennimore")).unwrap().id;
        for i in 0..50 {
            s.add(NewMemory::new(format!("plain filler {i}"))).unwrap();
        }
        assert!(file_contains(&path, b"SQLite format 3") == false, "file header is in clear");
        id
    };
    assert!(!file_contains(&path, b"Quimby"), "plaintext memory visible in the file");
    assert!(!file_contains(&path, b"filler"), "plaintext memory visible in the file");
    assert!(!dir.join("p.db.hnsw").exists(), "no clear-text graph beside an encrypted profile");

    let before = std::fs::read(&path).unwrap();
    let e = open(&path, &EncryptionKey::Passphrase("wrong".into())).err().unwrap();
    assert!(matches!(e, Error::WrongKey { .. }) && e.kind() == ErrorKind::WrongKey, "{e}");
    let e = MemoryStore::open(&path, Arc::new(HashEmbedder::new(16, 3)), MemoryConfig::default()).err().unwrap();
    assert!(matches!(e, Error::NotADatabase { .. }), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), before, "a failed open changed the file");

    let mut s = open(&path, &key).unwrap();
    assert_eq!(s.get(id).unwrap().text, "my therapist is Dr. Quimby-Fennimore");
    assert_eq!(s.search(&SearchQuery::new("therapist Quimby", 1)).unwrap()[0].memory.id, id);
    s.integrity_check().unwrap();
}

#[test]
fn raw_key_round_trip() {
    let dir = tmp_dir("enc-raw");
    let path = dir.join("p.db");
    let key = EncryptionKey::Raw([7u8; 32]);
    let id = open(&path, &key).unwrap().add(NewMemory::new("raw keyed secret")).unwrap().id;
    assert!(matches!(open(&path, &EncryptionKey::Raw([8u8; 32])), Err(Error::WrongKey { .. })));
    assert_eq!(open(&path, &key).unwrap().get(id).unwrap().text, "raw keyed secret");
}
