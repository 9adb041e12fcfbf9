//! The native format's manifest, as pure data: the root (the one mutable object, the commit
//! point of every push) and the shards of the ref table it names. See LAYOUT.md beside this file.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::layout::check_refname;
use crate::object_format::ObjectFormat;

/// What the root's `format` field holds.
pub const FORMAT_TAG: &str = "git-remote-s3 native";
/// The layout version this build writes and reads.
pub const VERSION: u32 = 1;
/// A shard holds about this many refs on average: a one-ref push rewrites one shard.
const REFS_PER_SHARD: usize = 128;
/// Commit ids of the root's ancestors it carries, newest first: how a pusher tells that its
/// commit won although others followed it.
pub const HISTORY: usize = 64;

/// Every ref of the remote, by name: its object id.
pub type RefTable = BTreeMap<String, String>;

/// The root object, `P/refs/native.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Root {
    pub format: String,
    pub version: u32,
    /// `sha1` or `sha256`; `None` until the first push.
    pub object_format: Option<String>,
    /// Counts commits: 1 for the first.
    pub generation: u64,
    /// This commit's random id.
    pub commit: String,
    /// The ids of the commits before this one, newest first, at most `HISTORY`.
    #[serde(default)]
    pub history: Vec<String>,
    /// The ref HEAD names.
    pub head: Option<String>,
    /// Refs that may be neither deleted nor forced.
    #[serde(default)]
    pub protected: Vec<String>,
    /// The ref table's shards, by number: the SHA-256 of each shard's bytes, `None` when empty.
    pub shards: Vec<Option<String>>,
    /// Every pack the remote's objects are in, oldest first.
    pub packs: Vec<PackEntry>,
    /// Packs a compaction replaced: still in the bucket for fetches that read an older root,
    /// until `git s3 doctor` sweeps them after the grace period.
    #[serde(default)]
    pub retired: Vec<Retired>,
    /// Garbage collections so far. A push packed against a root of another count packs again:
    /// what it left out as the remote's may have been collected.
    #[serde(default)]
    pub gc: u64,
    /// Ref deletions and forced moves since the last collection: only they make garbage.
    #[serde(default)]
    pub rewrites: u64,
    /// Bytes of the packs right after the last collection (or the first push).
    #[serde(default)]
    pub gc_bytes: u64,
    /// How long packs that left the root, and packs no root named, stay in the bucket: fetches
    /// and pushes slower than this may have to start again. Set when the remote is created
    /// (`s3.gcGraceSeconds`).
    #[serde(default = "default_grace_s")]
    pub grace_s: u64,
}

/// An hour: far longer than any fetch or push takes between reading the root and the packs it
/// names, and short enough that the bucket returns to one copy of history the same day.
pub const DEFAULT_GRACE_S: u64 = 3600;

fn default_grace_s() -> u64 {
    DEFAULT_GRACE_S
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retired {
    pub name: String,
    /// When it left the root, in seconds since the Unix epoch (the compacting daemon's clock).
    pub at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackEntry {
    /// git's name of the pack: the hex of its trailer.
    pub name: String,
    pub objects: u64,
    pub bytes: u64,
    pub idx_bytes: u64,
    /// The packs a compaction or collection made this one of: it holds no object they did not
    /// hold, so a reader that has some of them may fetch the others (retired, in the bucket for
    /// the grace period) instead of this one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replaces: Vec<String>,
}

impl Root {
    /// The root of a remote nobody has pushed to yet.
    pub fn empty() -> Self {
        Root {
            format: FORMAT_TAG.into(),
            version: VERSION,
            object_format: None,
            generation: 0,
            commit: String::new(),
            history: Vec::new(),
            head: None,
            protected: Vec::new(),
            shards: vec![None],
            packs: Vec::new(),
            retired: Vec::new(),
            gc: 0,
            rewrites: 0,
            gc_bytes: 0,
            grace_s: DEFAULT_GRACE_S,
        }
    }

    /// Reads a root written by anyone who can write to the bucket: every field is checked.
    pub fn parse(bytes: &[u8]) -> Result<Root, String> {
        let root: Root = serde_json::from_slice(bytes).map_err(|e| format!("it is not a native root ({e})"))?;
        if root.format != FORMAT_TAG {
            return Err(format!("its format is '{}', not '{FORMAT_TAG}'", root.format));
        }
        if root.version > VERSION {
            return Err(format!(
                "it is layout version {}, newer than this git-remote-s3 reads ({VERSION}); upgrade git-remote-s3",
                root.version
            ));
        }
        if let Some(format) = &root.object_format
            && ObjectFormat::from_name(format).is_none()
        {
            return Err(format!("its object format '{format}' is neither sha1 nor sha256"));
        }
        if root.shards.is_empty() || !root.shards.len().is_power_of_two() {
            return Err(format!("it names {} shards, not a power of two", root.shards.len()));
        }
        if let Some(bad) = root.shards.iter().flatten().find(|s| !is_sha256_hex(s)) {
            return Err(format!("it names a shard '{bad}' that is not a SHA-256"));
        }
        let names = root
            .packs
            .iter()
            .flat_map(|p| std::iter::once(&p.name).chain(&p.replaces))
            .chain(root.retired.iter().map(|r| &r.name));
        if let Some(bad) = names.into_iter().find(|name| ObjectFormat::of_hex(name).is_none()) {
            return Err(format!("it names a pack '{bad}' that is not a pack name"));
        }
        for name in root.head.iter().chain(&root.protected) {
            check_refname(name).map_err(|why| format!("it names a ref '{name}' git cannot use ({why})"))?;
        }
        Ok(root)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        // A struct of strings and numbers always serializes.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// The root that follows this one: a new commit id, this one's in the history.
    pub fn successor(&self) -> Root {
        let mut next = self.clone();
        next.generation = self.generation + 1;
        next.commit = new_commit_id();
        if !self.commit.is_empty() {
            next.history.insert(0, self.commit.clone());
            next.history.truncate(HISTORY);
        }
        next
    }

    /// Whether the commit `id` is this root's or one of its recorded ancestors'.
    pub fn descends_from(&self, id: &str) -> bool {
        self.commit == id || self.history.iter().any(|h| h == id)
    }

    pub fn is_protected(&self, refname: &str) -> bool {
        self.protected.iter().any(|p| p == refname)
    }

    pub fn has_pack(&self, name: &str) -> bool {
        self.packs.iter().any(|p| p.name == name)
    }

    pub fn pack_bytes(&self) -> u64 {
        self.packs.iter().map(|p| p.bytes).sum()
    }

    /// Whether a garbage collection is due: refs were deleted or forced since the last one, and
    /// the packs have grown to twice what the last one left. A remote whose history is rewritten
    /// often is thus repacked whole each time its storage doubles: amortised, each byte is
    /// downloaded and repacked a constant number of times.
    pub fn gc_due(&self) -> bool {
        self.rewrites > 0 && self.pack_bytes() > 2 * self.gc_bytes.max(1)
    }
}

/// 128 random bits in hex.
pub fn new_commit_id() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// How many shards a table of `refs` refs is cut into: a power of two, about `REFS_PER_SHARD` each.
pub fn shard_count(refs: usize) -> usize {
    refs.div_ceil(REFS_PER_SHARD).max(1).next_power_of_two()
}

/// The shard a ref lives in, among `count` (a power of two).
pub fn shard_of(refname: &str, count: usize) -> usize {
    let digest = Sha256::digest(refname.as_bytes());
    let mut top = [0u8; 8];
    top.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(top) % count as u64) as usize
}

/// A shard as stored: `<oid> <refname>\n` per ref, by name.
pub fn encode_shard(refs: &[(&String, &String)]) -> Vec<u8> {
    refs.iter().map(|(name, oid)| format!("{oid} {name}\n")).collect::<String>().into_bytes()
}

/// Cuts `table` into shards: each shard's name and bytes, `None` for an empty one.
pub fn split(table: &RefTable) -> Vec<Option<(String, Vec<u8>)>> {
    let count = shard_count(table.len());
    let mut shards: Vec<Vec<(&String, &String)>> = vec![Vec::new(); count];
    for (name, oid) in table {
        shards[shard_of(name, count)].push((name, oid));
    }
    shards
        .into_iter()
        .map(|refs| {
            (!refs.is_empty()).then(|| {
                let bytes = encode_shard(&refs);
                (sha256_hex(&bytes), bytes)
            })
        })
        .collect()
}

/// Reads a shard fetched as `name` (its SHA-256), number `index` of `count`: its bytes must
/// hash to its name, and every line must be a ref of this shard in one object format.
pub fn decode_shard(bytes: &[u8], name: &str, index: usize, count: usize) -> Result<Vec<(String, String)>, String> {
    if sha256_hex(bytes) != name {
        return Err("its bytes do not match its name".into());
    }
    let text = std::str::from_utf8(bytes).map_err(|_| "it is not text".to_string())?;
    let mut refs = Vec::new();
    let mut formats = HashSet::new();
    for line in text.lines() {
        let (oid, refname) = line.split_once(' ').ok_or_else(|| format!("a line is not '<oid> <ref>': '{line}'"))?;
        formats.insert(ObjectFormat::of_hex(oid).ok_or_else(|| format!("'{oid}' is not an object id"))?);
        check_refname(refname).map_err(|why| format!("it names a ref '{refname}' git cannot use ({why})"))?;
        if shard_of(refname, count) != index {
            return Err(format!("it holds {refname}, which belongs to another shard"));
        }
        refs.push((refname.to_string(), oid.to_string()));
    }
    if formats.len() > 1 {
        return Err("it mixes SHA-1 and SHA-256 ids".into());
    }
    Ok(refs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(n: usize) -> RefTable {
        (0..n).map(|i| (format!("refs/tags/v{i}"), format!("{:040x}", i + 1))).collect()
    }

    #[test]
    fn a_table_round_trips_through_its_shards() {
        let refs = table(1000);
        let shards = split(&refs);
        assert_eq!(shards.len(), 8);
        let mut read = RefTable::new();
        for (index, shard) in shards.iter().enumerate() {
            let Some((name, bytes)) = shard else { continue };
            read.extend(decode_shard(bytes, name, index, shards.len()).unwrap());
        }
        assert_eq!(read, refs);
    }

    #[test]
    fn a_one_ref_change_rewrites_one_shard() {
        let mut refs = table(10_000);
        let before = split(&refs);
        refs.insert("refs/tags/v17".into(), "f".repeat(40));
        let after = split(&refs);
        let changed = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        assert_eq!(changed, 1);
        let shard_bytes = after.iter().flatten().map(|(_, b)| b.len()).max().unwrap();
        assert!(shard_bytes < 32 * 1024, "a shard of {shard_bytes} bytes");
        let mut root = Root::empty();
        root.shards = after.iter().map(|s| s.as_ref().map(|(n, _)| n.clone())).collect();
        assert!(root.to_bytes().len() < 32 * 1024);
    }

    #[test]
    fn forged_shards_are_refused() {
        let refs = table(3);
        let shards = split(&refs);
        let (name, bytes) = shards[0].clone().unwrap();
        let mut forged = bytes.clone();
        forged[0] ^= 1;
        assert!(decode_shard(&forged, &name, 0, 1).unwrap_err().contains("do not match"));
        let bad = b"0123 refs/heads/main\n".to_vec();
        assert!(decode_shard(&bad, &sha256_hex(&bad), 0, 1).unwrap_err().contains("not an object id"));
        let bad = format!("{} refs/heads/a..b\n", "a".repeat(40)).into_bytes();
        assert!(decode_shard(&bad, &sha256_hex(&bad), 0, 1).unwrap_err().contains("git cannot use"));
        let (name, bytes) = shards[0].clone().unwrap();
        assert!(decode_shard(&bytes, &name, 0, 2).is_err() || shard_of("refs/tags/v0", 2) == 0);
    }

    #[test]
    fn roots_are_checked_and_remember_their_ancestry() {
        let root = Root::empty().successor();
        let next = root.successor();
        assert!(next.descends_from(&root.commit) && next.descends_from(&next.commit));
        assert!(!root.descends_from(&next.commit));
        assert_eq!(Root::parse(&next.to_bytes()).unwrap(), next);
        let mut newer = next.clone();
        newer.version = VERSION + 1;
        assert!(Root::parse(&newer.to_bytes()).unwrap_err().contains("upgrade"));
        let mut odd = next.clone();
        odd.shards = vec![None, None, None];
        assert!(Root::parse(&odd.to_bytes()).is_err());
        let mut bad_pack = next;
        bad_pack.packs.push(PackEntry { name: "../../x".into(), objects: 1, bytes: 1, idx_bytes: 1, replaces: vec![] });
        assert!(Root::parse(&bad_pack.to_bytes()).unwrap_err().contains("not a pack name"));
        assert!(Root::parse(b"{}").is_err());
    }

    #[test]
    fn history_is_bounded() {
        let mut root = Root::empty();
        for _ in 0..200 {
            root = root.successor();
        }
        assert_eq!(root.history.len(), HISTORY);
        assert_eq!(root.generation, 200);
    }
}
