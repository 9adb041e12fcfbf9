//! A bounded on-disk cache of the packs of bundles this daemon composed from, named by their
//! trailer (SHA-1 or SHA-256: its length tells), so the next composed push hashes and uploads from local bytes instead of
//! downloading the history. A pack is kept as a chain of immutable object files: a composed
//! push adds one small file for what it appended and shares the rest with the pack it built on,
//! so neither a push nor a new branch copies the history. The least recently used packs go first
//! past the cap, and a file goes with the last pack that uses it.
//!
//! Files: `<trailer>.entry` (the pack's object count and its chain), `<stem>.objects` (object
//! bytes; a pack file taken whole, of which the entry uses a range), `<stem>.oids` (the ids of
//! the objects in that range, 20 or 32 bytes each); `tmp/` holds what is being written.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tempfile::TempPath;

use super::pack::{PACK_HEADER_BYTES, PackHeader, pack_body};
use crate::object_format::{ObjectFormat, Oid};

/// The cache's size when the user sets none.
pub const DEFAULT_PACK_CACHE_BYTES: u64 = 4 * 1024 * 1024 * 1024;

const ENTRY_SUFFIX: &str = ".entry";
const OBJECTS_SUFFIX: &str = ".objects";
const OIDS_SUFFIX: &str = ".oids";

pub struct PackCache {
    dir: PathBuf,
    max_bytes: u64,
    /// Files of the packs in use (their entries, objects and ids), counted: eviction leaves them.
    held: Arc<Mutex<HashMap<PathBuf, usize>>>,
    /// One change of the cache's files at a time: a file is written before the entry naming it,
    /// and eviction must not see it in between.
    writing: Mutex<()>,
}

/// One link of a cached pack: object bytes at `range` of `objects`, whose ids are in `oids`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub objects: PathBuf,
    pub range: Range<u64>,
    pub oids: PathBuf,
}

/// A cached pack, held: its files stay until it is dropped.
pub struct CachedPack {
    pub trailer: String,
    /// Objects in the pack.
    pub objects: u32,
    /// The pack's object bytes (between its header and trailer), in order.
    pub chain: Vec<Link>,
    held_files: Vec<PathBuf>,
    held: Arc<Mutex<HashMap<PathBuf, usize>>>,
}

/// The ids of every object in a chain of a pack in `format`.
pub fn oids_of(chain: &[Link], format: ObjectFormat) -> io::Result<HashSet<Oid>> {
    let mut all = HashSet::new();
    for link in chain {
        let bytes = fs::read(&link.oids)?;
        all.extend(bytes.chunks_exact(format.raw_len()).filter_map(Oid::from_bytes));
    }
    Ok(all)
}

impl CachedPack {
    pub fn format(&self) -> io::Result<ObjectFormat> {
        trailer_format(&self.trailer)
    }
}

/// The object format of a pack, told by its trailer (hex).
pub fn trailer_format(trailer: &str) -> io::Result<ObjectFormat> {
    ObjectFormat::of_hex(trailer).ok_or_else(|| io::Error::other(format!("'{trailer}' is not a pack trailer")))
}

impl Drop for CachedPack {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for file in &self.held_files {
            if let Some(n) = held.get_mut(file) {
                *n -= 1;
                if *n == 0 {
                    held.remove(file);
                }
            }
        }
    }
}

/// What a new pack adds to the one it was built on: the object bytes at `range` of `file`
/// (taken into the cache), their ids, and the new pack's trailer.
pub struct Appended<'a> {
    pub file: &'a Path,
    pub range: Range<u64>,
    pub objects: u32,
    pub oids: &'a [Oid],
    pub trailer: &'a str,
}

impl PackCache {
    /// Opens the cache in `dir`, clearing what an earlier life left half-written.
    pub fn open(dir: PathBuf, max_bytes: u64) -> io::Result<Self> {
        let tmp = dir.join("tmp");
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        fs::create_dir_all(&tmp)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        Ok(Self { dir, max_bytes, held: Arc::default(), writing: Mutex::new(()) })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// How many packs the cache holds, and the bytes of their files.
    pub fn usage(&self) -> (usize, u64) {
        let Ok(dir) = fs::read_dir(&self.dir) else { return (0, 0) };
        let (mut packs, mut bytes) = (0, 0);
        for entry in dir.filter_map(Result::ok) {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(ENTRY_SUFFIX) {
                packs += 1;
            } else if name.ends_with(OBJECTS_SUFFIX) || name.ends_with(OIDS_SUFFIX) {
                bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
        (packs, bytes)
    }

    /// A fresh path for a file being written, on the cache's file system.
    /// A new name under `tmp/`, whose file is removed when the name is dropped: whatever an
    /// operation given up half-way was writing goes with it.
    pub fn temp_path(&self, what: &str) -> io::Result<TempPath> {
        TempPath::try_from_path(self.dir.join("tmp").join(format!("{what}-{}", new_stem())))
    }

    fn entry_path(&self, trailer: &str) -> PathBuf {
        self.dir.join(format!("{trailer}{ENTRY_SUFFIX}"))
    }

    /// The cached pack with this trailer, if its object bytes add up to `pack_len`.
    pub fn get(&self, trailer: &str, pack_len: u64) -> Option<CachedPack> {
        let entry = self.entry_path(trailer);
        let (objects, chain) = self.read_entry(&entry).ok()?;
        // Held before its files are checked: eviction may have taken one since the entry was
        // read, but none goes from now on.
        let held = self.hold(trailer, objects, chain);
        let body = pack_body(pack_len, trailer_format(trailer).ok()?).ok()?;
        let len: u64 = held.chain.iter().map(|l| l.range.end - l.range.start).sum();
        let present = held.chain.iter().all(|l| l.objects.is_file() && l.oids.is_file());
        if len != body.end - body.start || !present {
            return None;
        }
        // Recently used: eviction takes the oldest first.
        let _ = File::options().write(true).open(&entry).and_then(|f| f.set_modified(SystemTime::now()));
        Some(held)
    }

    /// Takes the pack that starts at `pack_start` of `file` (a pack, or a bundle) into the cache:
    /// the file itself when it is one of ours under `tmp/`, a copy of it with `copy`.
    pub fn insert_pack(
        &self,
        trailer: &str,
        file: &Path,
        pack_start: u64,
        oids: &[Oid],
        copy: bool,
    ) -> io::Result<CachedPack> {
        if copy {
            let tmp = self.temp_path("objects")?;
            fs::copy(file, &tmp)?;
            return self.insert_pack(trailer, &tmp, pack_start, oids, false);
        }
        let header = read_pack_header(file, pack_start)?;
        let len = fs::metadata(file)?.len();
        let body = pack_body(len.saturating_sub(pack_start), trailer_format(trailer)?).map_err(io::Error::other)?;
        let link = (file, pack_start + body.start..pack_start + body.end);
        self.add(trailer, header.objects, Vec::new(), link, oids)
    }

    /// Caches the pack made of `base` and `appended`, sharing `base`'s files.
    pub fn extend(&self, base: &CachedPack, appended: &Appended) -> io::Result<()> {
        let objects = base
            .objects
            .checked_add(appended.objects)
            .ok_or_else(|| io::Error::other("more objects than a pack can count"))?;
        let link = (appended.file, appended.range.clone());
        self.add(appended.trailer, objects, base.chain.clone(), link, appended.oids).map(drop)
    }

    /// Caches the pack `chain` + the object bytes at `range` of `file` (moved into the cache, its
    /// object ids beside it), held.
    fn add(
        &self,
        trailer: &str,
        objects: u32,
        mut chain: Vec<Link>,
        (file, range): (&Path, Range<u64>),
        oids: &[Oid],
    ) -> io::Result<CachedPack> {
        let stem = new_stem();
        let objects_path = self.dir.join(format!("{stem}{OBJECTS_SUFFIX}"));
        let oids_path = self.dir.join(format!("{stem}{OIDS_SUFFIX}"));
        chain.push(Link { objects: objects_path.clone(), range, oids: oids_path.clone() });
        let _writing = self.writing.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let held = self.hold(trailer, objects, chain);
        write_oids(&self.temp_path("oids")?, &oids_path, oids)?;
        fs::rename(file, &objects_path)?;
        self.write_entry(trailer, objects, &held.chain)?;
        self.evict_unlocked();
        Ok(held)
    }

    fn hold(&self, trailer: &str, objects: u32, chain: Vec<Link>) -> CachedPack {
        let mut held_files = vec![self.entry_path(trailer)];
        held_files.extend(chain.iter().flat_map(|l| [l.objects.clone(), l.oids.clone()]));
        let mut held = self.held.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for file in &held_files {
            *held.entry(file.clone()).or_default() += 1;
        }
        CachedPack { trailer: trailer.to_string(), objects, chain, held_files, held: self.held.clone() }
    }

    /// `objects <n>` then one `link <stem> <start> <end>` line per link.
    fn write_entry(&self, trailer: &str, objects: u32, chain: &[Link]) -> io::Result<()> {
        let mut text = format!("objects {objects}\n");
        for link in chain {
            let stem = link.objects.file_stem().and_then(|s| s.to_str()).ok_or_else(|| io::Error::other("bad link"))?;
            text.push_str(&format!("link {stem} {} {}\n", link.range.start, link.range.end));
        }
        let tmp = self.temp_path("entry")?;
        fs::write(&tmp, text)?;
        fs::rename(tmp, self.entry_path(trailer))
    }

    fn read_entry(&self, path: &Path) -> io::Result<(u32, Vec<Link>)> {
        let text = fs::read_to_string(path)?;
        let bad = || io::Error::other(format!("{} is malformed", path.display()));
        let mut lines = text.lines();
        let objects =
            lines.next().and_then(|l| l.strip_prefix("objects ")).and_then(|n| n.parse().ok()).ok_or_else(bad)?;
        let mut chain = Vec::new();
        for line in lines {
            let mut words = line.strip_prefix("link ").ok_or_else(bad)?.split(' ');
            let (Some(stem), Some(start), Some(end)) = (words.next(), words.next(), words.next()) else {
                return Err(bad());
            };
            if stem.is_empty() || !stem.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(bad());
            }
            let (start, end): (u64, u64) = (start.parse().map_err(|_| bad())?, end.parse().map_err(|_| bad())?);
            chain.push(Link {
                objects: self.dir.join(format!("{stem}{OBJECTS_SUFFIX}")),
                range: start..end,
                oids: self.dir.join(format!("{stem}{OIDS_SUFFIX}")),
            });
        }
        Ok((objects, chain))
    }

    /// Drops the least recently used packs until the files still in use fit the cap; packs being
    /// read stay. Files no remaining pack uses are removed.
    #[cfg(test)]
    fn evict(&self) {
        let _writing = self.writing.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        self.evict_unlocked();
    }

    fn evict_unlocked(&self) {
        let Ok(dir) = fs::read_dir(&self.dir) else { return };
        let mut entries: Vec<(SystemTime, String, Vec<Link>)> = dir
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let trailer = name.strip_suffix(ENTRY_SUFFIX)?.to_string();
                let modified = e.metadata().ok()?.modified().ok()?;
                let (_, chain) = self.read_entry(&e.path()).ok()?;
                Some((modified, trailer, chain))
            })
            .collect();
        entries.sort_by_key(|e| e.0);
        let held: HashSet<PathBuf> =
            self.held.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).keys().cloned().collect();
        let in_use = |kept: &[(SystemTime, String, Vec<Link>)]| -> HashSet<PathBuf> {
            let mut files = held.clone();
            files.extend(
                kept.iter().flat_map(|(_, _, chain)| chain.iter().flat_map(|l| [l.objects.clone(), l.oids.clone()])),
            );
            files
        };
        let size_of = |files: &HashSet<PathBuf>| -> u64 {
            files
                .iter()
                .filter(|f| f.extension().is_some_and(|e| e == "objects"))
                .filter_map(|f| fs::metadata(f).ok())
                .map(|m| m.len())
                .sum()
        };
        let mut kept = entries;
        let mut i = 0;
        while size_of(&in_use(&kept)) > self.max_bytes && i < kept.len() {
            if held.contains(&self.entry_path(&kept[i].1)) {
                i += 1;
                continue;
            }
            let (_, trailer, _) = kept.remove(i);
            tracing::debug!(%trailer, "pack cache: dropped the least recently used pack");
            let _ = fs::remove_file(self.entry_path(&trailer));
        }
        let used = in_use(&kept);
        let Ok(dir) = fs::read_dir(&self.dir) else { return };
        for file in dir.filter_map(Result::ok).map(|e| e.path()) {
            let name = file.to_string_lossy();
            if (name.ends_with(OBJECTS_SUFFIX) || name.ends_with(OIDS_SUFFIX)) && !used.contains(&file) {
                let _ = fs::remove_file(&file);
            }
        }
    }
}

fn new_stem() -> String {
    format!("{:016x}{:08x}", fastrand::u64(..), std::process::id())
}

fn read_pack_header(path: &Path, at: u64) -> io::Result<PackHeader> {
    let mut head = [0u8; PACK_HEADER_BYTES as usize];
    File::open(path)?.read_exact_at(&mut head, at)?;
    PackHeader::parse(&head).map_err(io::Error::other)
}

fn write_oids(tmp: &Path, path: &Path, oids: &[Oid]) -> io::Result<()> {
    fs::write(tmp, oids.iter().flat_map(Oid::as_bytes).copied().collect::<Vec<u8>>())?;
    fs::rename(tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha1::{Digest, Sha1};
    use std::io::{Read, Seek, SeekFrom};

    const TRAILER_BYTES: u64 = 20;

    /// An id made of one repeated byte.
    fn id(byte: u8) -> Oid {
        Oid::from_bytes(&[byte; 20]).unwrap()
    }

    /// A pack-shaped file: header, `body`, and the SHA-1 trailer git would write.
    fn pack_of(objects: u32, body: &[u8]) -> Vec<u8> {
        let mut bytes = PackHeader { version: 2, objects }.to_bytes().to_vec();
        bytes.extend_from_slice(body);
        let trailer = Sha1::digest(&bytes);
        bytes.extend_from_slice(&trailer);
        bytes
    }

    /// The trailer a pack file ends with, in hex.
    fn trailer_of(path: &Path) -> io::Result<String> {
        let mut file = File::open(path)?;
        file.seek(SeekFrom::End(-(TRAILER_BYTES as i64)))?;
        let mut end = [0u8; TRAILER_BYTES as usize];
        file.read_exact(&mut end)?;
        Ok(hex::encode(end))
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, bytes).unwrap();
        path
    }

    fn body_bytes(pack: &CachedPack) -> Vec<u8> {
        let mut out = Vec::new();
        for link in &pack.chain {
            let bytes = fs::read(&link.objects).unwrap();
            out.extend_from_slice(&bytes[link.range.start as usize..link.range.end as usize]);
        }
        out
    }

    #[test]
    fn a_pack_is_found_by_trailer_and_length_and_extended_without_copying() {
        let dir = tempfile::tempdir().unwrap();
        let cache = PackCache::open(dir.path().join("packs"), 1 << 30).unwrap();
        let old = pack_of(2, b"objects-one");
        let source = write(dir.path(), "source.pack", &old);
        let old_trailer = trailer_of(&source).unwrap();
        drop(cache.insert_pack(&old_trailer, &source, 0, &[id(1), id(2)], true).unwrap());
        assert!(source.exists(), "a copied pack stays where it was");
        assert!(cache.get(&old_trailer, old.len() as u64 + 1).is_none(), "a wrong length is a miss");
        let base = cache.get(&old_trailer, old.len() as u64).expect("cached");
        assert_eq!(base.objects, 2);
        assert_eq!(body_bytes(&base), b"objects-one");

        let appended = write(dir.path(), "appended.pack", &pack_of(1, b"more"));
        let new_trailer = hex::encode(Sha1::digest(b"anything"));
        cache
            .extend(
                &base,
                &Appended { file: &appended, range: 12..16, objects: 1, oids: &[id(3)], trailer: &new_trailer },
            )
            .unwrap();
        let new_len = (PACK_HEADER_BYTES + TRAILER_BYTES) as usize + b"objects-onemore".len();
        let extended = cache.get(&new_trailer, new_len as u64).expect("the new pack is cached");
        assert_eq!(extended.objects, 3);
        assert_eq!(body_bytes(&extended), b"objects-onemore");
        assert_eq!(oids_of(&extended.chain, ObjectFormat::Sha1).unwrap(), HashSet::from([id(1), id(2), id(3)]));
        assert_eq!(extended.chain[0], base.chain[0], "the base's file is shared, not copied");
        assert!(cache.get(&old_trailer, old.len() as u64).is_some(), "the base stays usable");
    }

    #[test]
    fn the_least_recently_used_pack_goes_past_the_cap_with_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let cache = PackCache::open(dir.path().join("packs"), 100).unwrap();
        let mut packs = Vec::new();
        for i in 0..3u8 {
            let bytes = pack_of(1, &[i; 40]);
            let source = write(dir.path(), &format!("p{i}"), &bytes);
            let trailer = trailer_of(&source).unwrap();
            drop(cache.insert_pack(&trailer, &source, 0, &[id(i)], false).unwrap());
            // Distinct ages, oldest first.
            let when = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000 + u64::from(i));
            File::options().write(true).open(cache.entry_path(&trailer)).unwrap().set_modified(when).unwrap();
            packs.push((trailer, bytes.len() as u64));
        }
        // Each pack file is 72 bytes: only the newest fits under 100.
        cache.evict();
        assert!(cache.get(&packs[0].0, packs[0].1).is_none());
        assert!(cache.get(&packs[1].0, packs[1].1).is_none());
        assert!(cache.get(&packs[2].0, packs[2].1).is_some());
        let files = fs::read_dir(&cache.dir).unwrap().filter_map(Result::ok).filter(|e| e.path().is_file()).count();
        assert_eq!(files, 3, "one entry, its objects and its ids are left");
    }

    #[test]
    fn a_pack_being_read_is_not_evicted() {
        let dir = tempfile::tempdir().unwrap();
        let cache = PackCache::open(dir.path().join("packs"), 10).unwrap();
        let bytes = pack_of(1, &[9; 40]);
        let source = write(dir.path(), "p", &bytes);
        let trailer = trailer_of(&source).unwrap();
        let held = cache.insert_pack(&trailer, &source, 0, &[id(9)], false).unwrap();
        cache.evict();
        assert!(cache.get(&trailer, bytes.len() as u64).is_some());
        drop(held);
    }

    #[test]
    fn files_of_a_pack_being_read_stay_when_its_entry_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let cache = PackCache::open(dir.path().join("packs"), 1 << 30).unwrap();
        let source = write(dir.path(), "base.pack", &pack_of(1, b"base"));
        let base = cache.insert_pack(&trailer_of(&source).unwrap(), &source, 0, &[id(1)], true).unwrap();
        let trailer = hex::encode(Sha1::digest(b"new"));
        let new_len = PACK_HEADER_BYTES + TRAILER_BYTES + 8;
        let first = write(dir.path(), "first.pack", &pack_of(1, b"more"));
        cache
            .extend(&base, &Appended { file: &first, range: 12..16, objects: 1, oids: &[id(2)], trailer: &trailer })
            .unwrap();
        let reader = cache.get(&trailer, new_len).expect("cached");
        // Another push (or a fetch) writes the same pack again, from other files.
        let second = write(dir.path(), "second.pack", &pack_of(1, b"more"));
        cache
            .extend(&base, &Appended { file: &second, range: 12..16, objects: 1, oids: &[id(2)], trailer: &trailer })
            .unwrap();
        let read_file = reader.chain[1].objects.clone();
        assert!(read_file.exists(), "a file being read stays");
        drop(reader);
        cache.evict();
        assert!(!read_file.exists(), "and goes once nobody reads it and no pack names it");
        assert!(cache.get(&trailer, new_len).is_some());
    }

    #[test]
    fn a_sha256_pack_is_cached_with_its_longer_ids() {
        let dir = tempfile::tempdir().unwrap();
        let cache = PackCache::open(dir.path().join("packs"), 1 << 30).unwrap();
        let mut bytes = PackHeader { version: 2, objects: 1 }.to_bytes().to_vec();
        bytes.extend_from_slice(b"object");
        bytes.extend_from_slice(&sha2::Sha256::digest(&bytes));
        let source = write(dir.path(), "sha256.pack", &bytes);
        let trailer = hex::encode(&bytes[bytes.len() - 32..]);
        let oid = Oid::from_bytes(&[7; 32]).unwrap();
        drop(cache.insert_pack(&trailer, &source, 0, &[oid], false).unwrap());
        let cached = cache.get(&trailer, bytes.len() as u64).expect("cached");
        assert_eq!(body_bytes(&cached), b"object");
        assert_eq!(oids_of(&cached.chain, cached.format().unwrap()).unwrap(), HashSet::from([oid]));
    }
}
