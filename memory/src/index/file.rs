//! The saved index: one file, `<db>.hnsw/index.bin`, the same on every target.
//!
//! ```text
//! magic "TLRINDEX", u32 format (1)
//! u32 dim, u64 rows, u32 M, u32 ef_construction, i64 generation
//! u32 profile id length, profile id (UTF-8)
//! u64 tombstone count, tombstones (u64 each)
//! ids (u64 × rows), vectors (f32 × rows × dim)
//! u8 graph present; if 1: u32 entry, u32 top level, then per row: u8 level, per level
//!   u16 count + u32 links
//! u64 checksum of everything before it
//! ```
//! All little-endian. It is written to `index.bin.tmp`, synced and renamed over `index.bin`
//! (then the folder is synced), so the file is whole or absent. Loading checks the magic, the
//! format, the length, the checksum, the profile and dimension, and that every link, level and
//! count is in range: anything else is `None` (the caller rebuilds), never a panic.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;

use super::flat::Vectors;
use super::hnsw::{Hnsw, Links};
use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"TLRINDEX";
const FORMAT: u32 = 1;
/// The file inside the index folder.
pub(super) const FILE: &str = "index.bin";
/// Files an earlier (hnsw_rs) build kept in the folder; removed on save.
const OLD_FILES: [&str; 3] = ["manifest.json", "graph.hnsw.graph", "graph.hnsw.data"];

/// What is saved besides the graph.
pub(super) struct Saved {
    pub(super) profile_id: String,
    pub(super) generation: i64,
    pub(super) vectors: Vectors,
    pub(super) tombstones: HashSet<usize>,
    pub(super) graph: Option<Hnsw>,
}

/// A fast checksum (four independent multiply-rotate lanes over 8-byte words): it catches
/// truncation and damage, not tampering (the file holds nothing SQLite does not).
pub(super) fn checksum(bytes: &[u8]) -> u64 {
    const K: [u64; 4] = [0x9E37_79B9_7F4A_7C15, 0xC2B2_AE3D_27D4_EB4F, 0x1656_67B1_9E37_79F9, 0x85EB_CA77_C2B2_AE63];
    let mut h = [1u64, 2, 3, 4];
    let mut chunks = bytes.chunks_exact(32);
    for c in &mut chunks {
        for l in 0..4 {
            let w = u64::from_le_bytes(c[8 * l..8 * l + 8].try_into().unwrap_or([0; 8]));
            h[l] = (h[l] ^ w).wrapping_mul(K[l]).rotate_left(29);
        }
    }
    let mut tail = [0u8; 32];
    let rest = chunks.remainder();
    tail[..rest.len()].copy_from_slice(rest);
    for l in 0..4 {
        let w = u64::from_le_bytes(tail[8 * l..8 * l + 8].try_into().unwrap_or([0; 8]));
        h[l] = (h[l] ^ w).wrapping_mul(K[l]).rotate_left(29);
    }
    let mut x = bytes.len() as u64;
    for l in 0..4 {
        x = (x ^ h[l]).wrapping_mul(K[(l + 1) % 4]).rotate_left(31);
    }
    x ^ (x >> 33)
}

/// Serialises an index.
pub(super) fn encode(
    profile_id: &str,
    generation: i64,
    m: usize,
    ef_construction: usize,
    vectors: &Vectors,
    tombstones: &HashSet<usize>,
    graph: Option<&Hnsw>,
) -> Vec<u8> {
    let n = vectors.len();
    let mut b = Vec::with_capacity(64 + profile_id.len() + n * (8 + 4 * vectors.dim + 4 * 2 * m + 4) + 8 * tombstones.len());
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&FORMAT.to_le_bytes());
    b.extend_from_slice(&(vectors.dim as u32).to_le_bytes());
    b.extend_from_slice(&(n as u64).to_le_bytes());
    b.extend_from_slice(&(m as u32).to_le_bytes());
    b.extend_from_slice(&(ef_construction as u32).to_le_bytes());
    b.extend_from_slice(&generation.to_le_bytes());
    b.extend_from_slice(&(profile_id.len() as u32).to_le_bytes());
    b.extend_from_slice(profile_id.as_bytes());
    let mut t: Vec<usize> = tombstones.iter().copied().collect();
    t.sort_unstable();
    b.extend_from_slice(&(t.len() as u64).to_le_bytes());
    for x in t {
        b.extend_from_slice(&(x as u64).to_le_bytes());
    }
    for &id in &vectors.ids {
        b.extend_from_slice(&(id as u64).to_le_bytes());
    }
    for x in &vectors.data[..n * vectors.dim] {
        b.extend_from_slice(&x.to_le_bytes());
    }
    match graph.filter(|g| g.len() == n).and_then(|g| Some((g, g.entry()?))) {
        Some((g, (entry, top))) => {
            b.push(1);
            b.extend_from_slice(&entry.to_le_bytes());
            b.extend_from_slice(&(top as u32).to_le_bytes());
            g.for_each_links(&mut |l| {
                b.push((l.len() - 1) as u8);
                for list in l {
                    b.extend_from_slice(&(list.len() as u16).to_le_bytes());
                    for x in list {
                        b.extend_from_slice(&x.to_le_bytes());
                    }
                }
            });
        }
        None => b.push(0),
    }
    let sum = checksum(&b);
    b.extend_from_slice(&sum.to_le_bytes());
    b
}

/// Writes `bytes` as `dir/index.bin`, atomically (temporary file, sync, rename, folder sync).
pub(super) fn write_atomic(dir: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tmp = dir.join(format!("{FILE}.tmp"));
    let path = dir.join(FILE);
    {
        let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
    for old in OLD_FILES {
        let _ = std::fs::remove_file(dir.join(old));
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// A little-endian reader that fails (None) instead of reading past the end.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.b.get(self.at..end)?;
        self.at = end;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    /// A count of items of `size` bytes that must fit in what is left.
    fn count(&mut self, size: usize) -> Option<usize> {
        let n = usize::try_from(self.u64()?).ok()?;
        (n.checked_mul(size)? <= self.b.len() - self.at).then_some(n)
    }
}

/// Parses a saved index; `None` unless it is whole, for `dim`, and consistent.
pub(super) fn decode(bytes: &[u8], dim: usize) -> Option<(Saved, usize, usize)> {
    let body_len = bytes.len().checked_sub(8)?;
    let (body, sum) = bytes.split_at(body_len);
    if u64::from_le_bytes(sum.try_into().ok()?) != checksum(body) {
        return None;
    }
    let mut r = Reader { b: body, at: 0 };
    if r.take(8)? != MAGIC || r.u32()? != FORMAT || r.u32()? as usize != dim || dim == 0 {
        return None;
    }
    let n = r.count(8 + 4 * dim)?;
    let m = r.u32()? as usize;
    let ef_construction = r.u32()? as usize;
    let generation = r.u64()? as i64;
    let plen = r.u32()? as usize;
    let profile_id = String::from_utf8(r.take(plen)?.to_vec()).ok()?;
    let nt = r.count(8)?;
    let mut tombstones = HashSet::with_capacity(nt);
    for _ in 0..nt {
        tombstones.insert(usize::try_from(r.u64()?).ok()?);
    }
    let mut ids = Vec::with_capacity(n);
    for c in r.take(n * 8)?.chunks_exact(8) {
        ids.push(usize::try_from(u64::from_le_bytes(c.try_into().ok()?)).ok()?);
    }
    let data: Vec<f32> =
        r.take(n * dim * 4)?.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let vectors = Vectors { dim, ids, data };
    let graph = match r.u8()? {
        0 => None,
        1 => {
            if !(2..=128).contains(&m) || n > u32::MAX as usize {
                return None;
            }
            let entry = r.u32()?;
            let top = r.u32()? as usize;
            let mut links: Vec<Links> = Vec::with_capacity(n);
            for _ in 0..n {
                let level = r.u8()? as usize;
                if level > top {
                    return None;
                }
                let mut l = Vec::with_capacity(level + 1);
                for lev in 0..=level {
                    let c = r.u16()? as usize;
                    if c > if lev == 0 { 2 * m } else { m } {
                        return None;
                    }
                    let raw = r.take(4 * c)?;
                    let list: Vec<u32> = raw.chunks_exact(4).map(|x| u32::from_le_bytes([x[0], x[1], x[2], x[3]])).collect();
                    if list.iter().any(|&x| x as usize >= n) {
                        return None;
                    }
                    l.push(list);
                }
                links.push(l);
            }
            if n == 0 || entry as usize >= n || links[entry as usize].len() != top + 1 {
                return None;
            }
            Some(Hnsw::from_parts(m, ef_construction, links, Some((entry, top))))
        }
        _ => return None,
    };
    if r.at != body.len() {
        return None;
    }
    Some((Saved { profile_id, generation, vectors, tombstones, graph }, m, ef_construction))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::random_unit;

    #[test]
    fn checksum_sees_every_byte_and_the_length() {
        let b: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let base = checksum(&b);
        for i in [0, 1, 31, 32, 500, 999] {
            let mut c = b.clone();
            c[i] ^= 1;
            assert_ne!(checksum(&c), base, "flip at {i}");
        }
        assert_ne!(checksum(&b[..999]), base);
        let mut longer = b.clone();
        longer.push(0);
        assert_ne!(checksum(&longer), base);
    }

    #[test]
    fn every_truncation_and_many_flips_are_refused() {
        let dim = 4;
        let items: Vec<(usize, Vec<f32>)> = (0..40).map(|i| (i + 10, random_unit(dim, i as u64))).collect();
        let v = Vectors::from_items(dim, &items);
        let g = Hnsw::build(v.rows(), 4, 20, 1);
        let tomb: HashSet<usize> = [11, 12].into_iter().collect();
        let bytes = encode("prof", 9, 4, 20, &v, &tomb, Some(&g));
        let (saved, m, efc) = decode(&bytes, dim).expect("round trip");
        assert_eq!((saved.profile_id.as_str(), saved.generation, m, efc), ("prof", 9, 4, 20));
        assert_eq!(saved.vectors.ids, v.ids);
        assert_eq!(saved.vectors.data, v.data);
        assert_eq!(saved.tombstones, tomb);
        let sg = saved.graph.expect("graph");
        assert_eq!(sg.entry(), g.entry());
        for i in 0..40 {
            assert_eq!(sg.links_of(i), g.links_of(i));
        }
        assert!(decode(&bytes, dim + 1).is_none(), "other dimension");
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut], dim).is_none(), "truncated at {cut}");
        }
        for i in (0..bytes.len()).step_by(7) {
            let mut c = bytes.clone();
            c[i] = c[i].wrapping_add(1);
            assert!(decode(&c, dim).is_none(), "byte {i} changed");
        }
        let no_graph = encode("prof", 9, 4, 20, &v, &tomb, None);
        assert!(decode(&no_graph, dim).expect("vectors only").0.graph.is_none());
    }

    #[test]
    fn a_consistent_checksum_does_not_excuse_bad_links() {
        // A file damaged *before* its checksum was computed (a bug, not the disk) is refused
        // by the range checks.
        let dim = 2;
        let v = Vectors::from_items(dim, &[(1, vec![1.0, 0.0]), (2, vec![0.0, 1.0])]);
        let links = vec![vec![vec![1u32]], vec![vec![7u32]]];
        let g = Hnsw::from_parts(4, 10, links, Some((0, 0)));
        let bytes = encode("p", 1, 4, 10, &v, &HashSet::new(), Some(&g));
        assert!(decode(&bytes, dim).is_none());
    }
}
