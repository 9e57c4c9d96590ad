//! Checkpoints: everything a killed run needs to go on and end bit-identical to a run that was
//! never stopped (LoRA parameters, AdamW moments and step, position in the data order, RNG
//! state), in one file written atomically (temp file, fsync, rename, fsync of the folder).
//!
//! Layout: `TAILORCK`, format version (u32 LE), JSON header length (u64 LE), the JSON header
//! ([`Meta`]), then three f32 LE arrays of the header's `len` values (parameters, Adam `m`,
//! Adam `v`), then the SHA-256 of everything before it.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

const MAGIC: &[u8; 8] = b"TAILORCK";
const VERSION: u32 = 1;
/// The checkpoint's file name inside `checkpoint_dir`.
pub const FILE_NAME: &str = "trainer-checkpoint.bin";

/// Position of a run, recorded in the header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Meta {
    /// Identifies the configuration, data and base the run was started with.
    pub run_id: String,
    /// Optimizer steps done.
    pub step: usize,
    pub epoch: usize,
    /// Next index into `order`.
    pub cursor: usize,
    pub order: Vec<u32>,
    pub rng: u64,
    pub adam_t: u64,
    pub len: usize,
    pub losses: Vec<f32>,
    pub trained_tokens: u64,
}

/// Full state of a run.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct State {
    pub meta: Meta,
    pub params: Vec<f32>,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
}

pub(crate) fn path_in(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

pub(crate) fn save(dir: &Path, s: &State) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let path = path_in(dir);
    let tmp = dir.join(format!("{FILE_NAME}.tmp"));
    let header = serde_json::to_vec(&s.meta).map_err(|e| Error::checkpoint(&path, e.to_string()))?;
    let mut buf = Vec::with_capacity(64 + header.len() + 12 * s.params.len());
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&VERSION.to_le_bytes());
    buf.extend_from_slice(&(header.len() as u64).to_le_bytes());
    buf.extend_from_slice(&header);
    for arr in [&s.params, &s.m, &s.v] {
        assert_eq!(arr.len(), s.meta.len);
        for x in arr.iter() {
            buf.extend_from_slice(&x.to_le_bytes());
        }
    }
    let digest = Sha256::digest(&buf);
    buf.extend_from_slice(&digest);
    {
        let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        f.write_all(&buf).map_err(|e| Error::io(&tmp, e))?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
    // Make the rename itself durable (not possible on every platform; best effort).
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The checkpoint in `dir`, if there is one.
pub(crate) fn load(dir: &Path) -> Result<Option<State>> {
    let path = path_in(dir);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&path, e)),
    };
    let bad = |r: &str| Error::checkpoint(&path, r.to_string());
    if bytes.len() < 20 + 32 || &bytes[..8] != MAGIC {
        return Err(bad("not a Tailor trainer checkpoint"));
    }
    let (body, digest) = bytes.split_at(bytes.len() - 32);
    if Sha256::digest(body).as_slice() != digest {
        return Err(bad("checksum mismatch (truncated or corrupt)"));
    }
    let version = u32::from_le_bytes(body[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(bad(&format!("format version {version}, expected {VERSION}")));
    }
    let hlen = u64::from_le_bytes(body[12..20].try_into().expect("8 bytes")) as usize;
    let header = body.get(20..20usize.saturating_add(hlen)).ok_or_else(|| bad("truncated header"))?;
    let meta: Meta = serde_json::from_slice(header).map_err(|e| bad(&format!("header: {e}")))?;
    let data = &body[20 + hlen..];
    if data.len() != meta.len.checked_mul(12).ok_or_else(|| bad("size overflow"))? {
        return Err(bad("array sizes do not match the header"));
    }
    let floats: Vec<f32> = data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect();
    let n = meta.len;
    Ok(Some(State { params: floats[..n].to_vec(), m: floats[n..2 * n].to_vec(), v: floats[2 * n..].to_vec(), meta }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> State {
        State {
            meta: Meta {
                run_id: "abc".into(),
                step: 3,
                epoch: 1,
                cursor: 2,
                order: vec![2, 0, 1],
                rng: 42,
                adam_t: 3,
                len: 4,
                losses: vec![1.0, 0.5],
                trained_tokens: 99,
            },
            params: vec![1.0, -2.0, 3.5, f32::MIN_POSITIVE],
            m: vec![0.1; 4],
            v: vec![0.2; 4],
        }
    }

    #[test]
    fn round_trip_and_corruption_detected() {
        let dir = std::env::temp_dir().join(format!("tailor-ck-{}-{}", std::process::id(), line!()));
        assert!(load(&dir).unwrap().is_none());
        save(&dir, &state()).unwrap();
        assert_eq!(load(&dir).unwrap().unwrap(), state());
        let p = path_in(&dir);
        let mut b = std::fs::read(&p).unwrap();
        let i = b.len() - 40;
        b[i] ^= 1;
        std::fs::write(&p, &b).unwrap();
        assert!(matches!(load(&dir), Err(Error::Checkpoint { .. })));
        std::fs::write(&p, b"junk").unwrap();
        assert!(matches!(load(&dir), Err(Error::Checkpoint { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
