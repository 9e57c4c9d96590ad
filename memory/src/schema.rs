//! Opening a profile file safely and migrating its schema.
//!
//! A profile is recognised by `PRAGMA application_id` = [`APPLICATION_ID`]. Opening checks,
//! before writing anything, that the file is SQLite (with the right key when encrypted), that
//! it is ours or empty, and that its schema is not newer than this build. Each migration runs
//! in its own transaction and sets `PRAGMA user_version`.

use std::path::Path;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use crate::error::{Error, Result};

/// `PRAGMA application_id` of a Tailor profile ("TLRM").
pub const APPLICATION_ID: i32 = 0x544C_524D;

/// Ordered migrations; entry `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: memories + history + FTS5, feedback, adapter lineage, meta.
    r#"
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE memories (
        id               INTEGER PRIMARY KEY AUTOINCREMENT,
        text             TEXT    NOT NULL CHECK (length(text) > 0),
        metadata         TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(metadata)),
        created_at       INTEGER NOT NULL,
        updated_at       INTEGER NOT NULL,
        access_count     INTEGER NOT NULL DEFAULT 0,
        last_accessed_at INTEGER,
        importance       REAL    NOT NULL DEFAULT 0.5,
        embedding        BLOB,     -- f32 little-endian, embedding_dim values, L2-normalised
        embedding_model  TEXT,
        embedding_dim    INTEGER,
        vec_id           INTEGER UNIQUE  -- node id in the HNSW graph (new on every re-embed)
    );

    CREATE TABLE memory_history (
        id            INTEGER PRIMARY KEY,
        memory_id     INTEGER NOT NULL REFERENCES memories(id) ON DELETE CASCADE,
        text          TEXT    NOT NULL,
        metadata      TEXT    NOT NULL DEFAULT '{}',
        superseded_at INTEGER NOT NULL
    );
    CREATE INDEX memory_history_by_memory ON memory_history(memory_id);

    -- External-content FTS5 over memories.text, kept in sync by triggers (deletions too).
    CREATE VIRTUAL TABLE memories_fts USING fts5(
        text, content = 'memories', content_rowid = 'id', tokenize = 'unicode61 remove_diacritics 2'
    );
    -- Deleted terms are removed from the index at once, not left behind delete markers.
    INSERT INTO memories_fts(memories_fts, rank) VALUES ('secure-delete', 1);
    CREATE TRIGGER memories_fts_ai AFTER INSERT ON memories BEGIN
        INSERT INTO memories_fts(rowid, text) VALUES (new.id, new.text);
    END;
    CREATE TRIGGER memories_fts_ad AFTER DELETE ON memories BEGIN
        INSERT INTO memories_fts(memories_fts, rowid, text) VALUES ('delete', old.id, old.text);
    END;
    CREATE TRIGGER memories_fts_au AFTER UPDATE OF text ON memories BEGIN
        INSERT INTO memories_fts(memories_fts, rowid, text) VALUES ('delete', old.id, old.text);
        INSERT INTO memories_fts(rowid, text) VALUES (new.id, new.text);
    END;

    CREATE TABLE feedback (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        turn_id     TEXT,
        prompt      TEXT    NOT NULL,
        answer      TEXT    NOT NULL,
        kind        TEXT    NOT NULL
                    CHECK (kind IN ('thumbs_up', 'thumbs_down', 'correction', 'preference')),
        corrected   TEXT,
        chosen      TEXT,
        rejected    TEXT,
        created_at  INTEGER NOT NULL,
        consumed_by TEXT,
        consumed_at INTEGER,
        CHECK (kind <> 'correction' OR corrected IS NOT NULL),
        CHECK (kind <> 'preference' OR (chosen IS NOT NULL AND rejected IS NOT NULL))
    );
    CREATE INDEX feedback_unconsumed ON feedback(id) WHERE consumed_by IS NULL;

    CREATE TABLE adapters (
        version    TEXT PRIMARY KEY,
        parent     TEXT REFERENCES adapters(version),
        created_at INTEGER NOT NULL,
        metrics    TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(metrics))
    );
    "#,
    // 2: which feedback each adapter version learned from, and versions made stale by a
    // forgotten event. The link has no foreign key to `feedback`: it must outlive the event
    // it records, so that forgetting the event can still find every version that saw it.
    r#"
    CREATE TABLE adapter_feedback (
        version     TEXT    NOT NULL REFERENCES adapters(version) ON DELETE CASCADE,
        feedback_id INTEGER NOT NULL,
        PRIMARY KEY (version, feedback_id)
    ) WITHOUT ROWID;
    CREATE INDEX adapter_feedback_by_feedback ON adapter_feedback(feedback_id);
    ALTER TABLE adapters ADD COLUMN tainted_at INTEGER;
    INSERT OR IGNORE INTO adapter_feedback (version, feedback_id)
        SELECT consumed_by, id FROM feedback WHERE consumed_by IN (SELECT version FROM adapters);
    "#,
    // 3: the memories mirrored from feedback (a correction becomes a memory at once), linked
    // to every event they came from so that forgetting an event forgets them too. No foreign
    // key to `feedback`, like `adapter_feedback`: the store deletes the memory with the event.
    // Corrections recorded before this version are not mirrored retroactively.
    r#"
    CREATE TABLE memory_feedback (
        memory_id   INTEGER NOT NULL REFERENCES memories(id) ON DELETE CASCADE,
        feedback_id INTEGER NOT NULL,
        PRIMARY KEY (memory_id, feedback_id)
    ) WITHOUT ROWID;
    CREATE INDEX memory_feedback_by_feedback ON memory_feedback(feedback_id);
    "#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// How the store was asked to open the file.
pub(crate) enum Key<'a> {
    None,
    #[cfg_attr(not(feature = "encryption"), allow(dead_code))]
    Some(&'a crate::EncryptionKey),
}

/// Opens (creating if absent) and validates a profile database, then migrates it.
pub(crate) fn open(path: &Path, key: Key<'_>, busy_timeout_ms: u64) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            return Err(Error::NotFound { path: dir.to_path_buf() });
        }
    }
    if path.is_dir() {
        return Err(Error::invalid(format!("{} is a directory", path.display())));
    }
    let conn = Connection::open_with_flags(path, flags).map_err(|e| classify_open(path, &key, e))?;
    conn.busy_timeout(std::time::Duration::from_millis(busy_timeout_ms))?;
    apply_key(&conn, &key)?;

    // Read-only probes first: nothing is written before we know the file is ours or empty.
    let probe = |conn: &Connection| -> rusqlite::Result<(i32, i64, i64)> {
        let app: i32 = conn.query_row("PRAGMA application_id", [], |r| r.get(0))?;
        let ver: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let objects: i64 = conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))?;
        Ok((app, ver, objects))
    };
    let (app, version, objects) = probe(&conn).map_err(|e| classify_open(path, &key, e))?;
    if app != APPLICATION_ID && !(app == 0 && objects == 0) {
        return Err(Error::ForeignDatabase { path: path.to_path_buf(), application_id: app });
    }
    if version > SCHEMA_VERSION {
        return Err(Error::SchemaTooNew {
            path: path.to_path_buf(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }

    // WAL: readers never block the writer and a crash leaves a consistent database.
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::Corrupt { reason: format!("cannot switch to WAL (journal_mode {mode})") });
    }
    conn.execute_batch(
        "PRAGMA foreign_keys = ON;
         PRAGMA synchronous = NORMAL;
         PRAGMA secure_delete = ON;",
    )?;
    migrate_to(conn, version, SCHEMA_VERSION)
}

/// Runs the migrations that take the schema from version `from` to `to`.
fn migrate_to(mut conn: Connection, from: i64, to: i64) -> Result<Connection> {
    for (i, sql) in MIGRATIONS.iter().enumerate().take(to as usize).skip(from as usize) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Someone else may have migrated while we waited for the lock.
        let now: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if now > i as i64 {
            continue;
        }
        tx.execute_batch(sql)?;
        if i == 0 {
            tx.execute_batch(&format!("PRAGMA application_id = {APPLICATION_ID};"))?;
            tx.execute(
                "INSERT INTO meta(key, value) VALUES ('profile_id', ?1), ('index_generation', '0'),
                 ('next_vec_id', '1')",
                [profile_id()],
            )?;
        }
        tx.execute_batch(&format!("PRAGMA user_version = {};", i + 1))?;
        tx.commit()?;
    }
    Ok(conn)
}

/// A random-enough id naming this profile (ties the index dump to this database).
fn profile_id() -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(crate::types::now_millis().to_le_bytes());
    h.update(std::process::id().to_le_bytes());
    let local = 0u8;
    h.update(format!("{:p}", &local).as_bytes());
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.update(t.subsec_nanos().to_le_bytes());
    }
    h.finalize().iter().take(16).map(|b| format!("{b:02x}")).collect()
}

fn apply_key(conn: &Connection, key: &Key<'_>) -> Result<()> {
    match key {
        Key::None => Ok(()),
        #[cfg(feature = "encryption")]
        Key::Some(k) => {
            // A wrong key is reported as Error::WrongKey; SQLCipher's own stderr log of the
            // failed HMAC check is noise for a host app.
            let _ = conn.execute_batch("PRAGMA cipher_log_level = NONE;");
            conn.execute_batch(&format!("PRAGMA key = {};", k.pragma_literal()))?;
            Ok(())
        }
        #[cfg(not(feature = "encryption"))]
        Key::Some(_) => {
            let _ = conn;
            Err(Error::EncryptionUnavailable)
        }
    }
}

fn classify_open(path: &Path, key: &Key<'_>, e: rusqlite::Error) -> Error {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase) => match key {
            Key::None => Error::NotADatabase { path: path.to_path_buf() },
            Key::Some(_) => Error::WrongKey { path: path.to_path_buf() },
        },
        Some(rusqlite::ErrorCode::DatabaseCorrupt) => {
            Error::Corrupt { reason: format!("{}: {e}", path.display()) }
        }
        Some(rusqlite::ErrorCode::CannotOpen) => Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        },
        _ => Error::Sqlite(e),
    }
}

/// `PRAGMA integrity_check`, `Ok(())` when the answer is `ok`.
pub(crate) fn integrity_check(conn: &Connection) -> Result<()> {
    let mut stmt = conn.prepare("PRAGMA integrity_check")?;
    let rows: Vec<String> = stmt.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
    if rows.len() == 1 && rows[0] == "ok" {
        Ok(())
    } else {
        Err(Error::Corrupt { reason: rows.join("; ") })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("tailor-schema-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("p.db")
    }

    #[test]
    fn fresh_file_gets_latest_schema_and_reopens() {
        let p = tmp("fresh");
        let c = open(&p, Key::None, 1000).unwrap();
        let v: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        let app: i32 = c.query_row("PRAGMA application_id", [], |r| r.get(0)).unwrap();
        assert_eq!(app, APPLICATION_ID);
        let fk: i64 = c.query_row("PRAGMA foreign_keys", [], |r| r.get(0)).unwrap();
        assert_eq!(fk, 1);
        drop(c);
        let c = open(&p, Key::None, 1000).unwrap();
        integrity_check(&c).unwrap();
    }

    /// A profile written by the previous build (schema 2, no `memory_feedback`) opens,
    /// migrates to the current version keeping its data, and mirrors corrections from then on.
    #[test]
    fn previous_schema_version_opens_and_migrates() {
        use crate::{FeedbackKind, MemoryConfig, MemoryStore, NewFeedback, SearchMode, SearchQuery};
        let p = tmp("previous");
        {
            let c = Connection::open(&p).unwrap();
            let c = migrate_to(c, 0, 2).unwrap();
            c.execute(
                "INSERT INTO memories (text, created_at, updated_at) VALUES ('My sister Anna lives in Lisbon.', 1, 1)",
                [],
            )
            .unwrap();
            c.execute(
                "INSERT INTO feedback (prompt, answer, kind, corrected, created_at)
                 VALUES ('What is my cat''s name?', 'Tom', 'correction', 'Zorblax', 1)",
                [],
            )
            .unwrap();
            let v: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
            assert_eq!(v, 2);
            let t: i64 = c
                .query_row("SELECT count(*) FROM sqlite_schema WHERE name = 'memory_feedback'", [], |r| r.get(0))
                .unwrap();
            assert_eq!(t, 0);
        }
        let embedder = std::sync::Arc::new(crate::testing::HashEmbedder::new(16, 1));
        let mut s = MemoryStore::open(&p, embedder, MemoryConfig::default()).unwrap();
        let v: i64 = s.conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        integrity_check(&s.conn).unwrap();
        // The old memory is there and embedded (it had no vector); the old correction was
        // not mirrored retroactively.
        let hit = &s.search(&SearchQuery::new("My sister Anna lives in Lisbon.", 1).mode(SearchMode::Vector)).unwrap()[0];
        assert!(hit.memory.id == 1 && hit.similarity > 0.999);
        assert_eq!(s.len().unwrap(), 1);
        assert!(s.feedback_memories(1).unwrap().is_empty());
        let f = s.add_feedback_mirrored(NewFeedback::new("What is my cat's name?", "Tom", FeedbackKind::Correction { corrected: "Zorblax".into() })).unwrap();
        assert_eq!(f.id, 2);
        assert_eq!(s.feedback_memories(2).unwrap(), vec![f.memory.unwrap().id]);
        drop(s);
        let c = open(&p, Key::None, 1000).unwrap();
        let links: i64 = c.query_row("SELECT count(*) FROM memory_feedback", [], |r| r.get(0)).unwrap();
        assert_eq!(links, 1);
    }

    #[test]
    fn foreign_sqlite_file_is_refused_and_untouched() {
        let p = tmp("foreign");
        {
            let c = Connection::open(&p).unwrap();
            c.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);").unwrap();
        }
        let before = std::fs::read(&p).unwrap();
        let err = open(&p, Key::None, 1000).unwrap_err();
        assert!(matches!(err, Error::ForeignDatabase { application_id: 0, .. }), "{err}");
        assert_eq!(std::fs::read(&p).unwrap(), before);
    }

    #[test]
    fn newer_schema_is_refused() {
        let p = tmp("newer");
        drop(open(&p, Key::None, 1000).unwrap());
        {
            let c = Connection::open(&p).unwrap();
            c.execute_batch(&format!("PRAGMA user_version = {};", SCHEMA_VERSION + 1)).unwrap();
        }
        let err = open(&p, Key::None, 1000).unwrap_err();
        assert!(matches!(err, Error::SchemaTooNew { .. }), "{err}");
    }
}
