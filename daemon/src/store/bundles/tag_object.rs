//! A tag whose target the repository already has needs only the tag object. A whole bundle (the
//! Python tool's, or an old one of ours) records no segment, but `git pack-objects` writes the
//! tagged tips and their tags among the first objects of the pack. So a fetch of such a tag reads
//! a bounded prefix of the bundle (`PREFIX_READS`), walks the pack's entries to the object whose
//! id is the bundle's tip, and when that is a tag whose target is here, indexes it alone. Anything
//! else (not there, not a tag, stored as a delta, a target missing) means the whole bundle.

use std::path::{Path, PathBuf};

use flate2::{Decompress, FlushDecompress, Status};

use super::BundleRepo;
use super::fetch::RemoteBundle;
use super::header;
use super::pack::{PACK_HEADER_BYTES, PackHeader};
use crate::git::GitError;
use crate::object_format::ObjectFormat;
use crate::progress::Events;
use crate::store::download::{keep_file, keep_option};

/// How much of a bundle is read to find its tag object: a first look, then a longer one.
pub(super) const PREFIX_READS: [u64; 2] = [64 * 1024, 1024 * 1024];

/// What the walk of a pack's first entries found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Scan {
    /// The tag object: its entry's bytes as the pack stores them, and the object it tags.
    Tag { entry: Vec<u8>, target: String },
    /// The wanted object is there but is no tag, or cannot be read alone.
    Unusable(String),
    /// The prefix ends before the wanted object.
    NeedMore,
}

/// Tags and commits larger than this are not looked into.
const MAX_READ_OBJECT_BYTES: u64 = 1024 * 1024;

const OBJ_COMMIT: u8 = 1;
const OBJ_TAG: u8 = 4;
const OBJ_OFS_DELTA: u8 = 6;
const OBJ_REF_DELTA: u8 = 7;

/// Walks the entries of the pack that starts at `pack` (its header included; the pack may be
/// cut short anywhere) to the object `oid`.
pub(super) fn find_object(pack: &[u8], oid: &str, format: ObjectFormat) -> Scan {
    let Ok(header) = PackHeader::parse(pack) else {
        return Scan::NeedMore;
    };
    let mut at = PACK_HEADER_BYTES as usize;
    for _ in 0..header.objects {
        let start = at;
        let Some((kind, size, used)) = entry_header(&pack[at..]) else {
            return Scan::NeedMore;
        };
        at += used;
        match kind {
            OBJ_OFS_DELTA => match pack[at..].iter().position(|b| b & 0x80 == 0) {
                Some(last) => at += last + 1,
                None => return Scan::NeedMore,
            },
            OBJ_REF_DELTA => at += format.raw_len(),
            _ => {}
        }
        if at > pack.len() {
            return Scan::NeedMore;
        }
        // Only tags and commits can be the tip; neither is large.
        let keep = (kind == OBJ_TAG || kind == OBJ_COMMIT) && size <= MAX_READ_OBJECT_BYTES;
        let Some((content, consumed)) = inflate(&pack[at..], size, keep) else {
            return Scan::NeedMore;
        };
        at += consumed;
        if !keep {
            continue;
        }
        let name = if kind == OBJ_TAG { "tag" } else { "commit" };
        let mut hasher = format.hasher();
        hasher.update(format!("{name} {}\0", content.len()).as_bytes());
        hasher.update(&content);
        if hex::encode(hasher.finalize()) != oid {
            continue;
        }
        if kind != OBJ_TAG {
            let what = if kind == OBJ_COMMIT { "a commit" } else { "no tag" };
            return Scan::Unusable(format!("{oid} is {what}"));
        }
        let target = content
            .split(|&b| b == b'\n')
            .next()
            .and_then(|line| line.strip_prefix(b"object "))
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .filter(|hex| ObjectFormat::of_hex(hex).is_some());
        return match target {
            Some(target) => Scan::Tag { entry: pack[start..at].to_vec(), target: target.to_string() },
            None => Scan::Unusable(format!("the tag {oid} names no object")),
        };
    }
    Scan::Unusable(format!("the pack does not hold {oid} whole"))
}

/// A pack entry's type, inflated size and header length.
fn entry_header(bytes: &[u8]) -> Option<(u8, u64, usize)> {
    let first = *bytes.first()?;
    let kind = (first >> 4) & 0x7;
    let mut size = u64::from(first & 0x0f);
    let (mut shift, mut used, mut more) = (4, 1, first & 0x80 != 0);
    while more {
        let byte = *bytes.get(used)?;
        if shift > 57 {
            return None;
        }
        size |= u64::from(byte & 0x7f) << shift;
        shift += 7;
        used += 1;
        more = byte & 0x80 != 0;
    }
    Some((kind, size, used))
}

/// Inflates the zlib stream at the start of `bytes`, which must make `size` bytes. Returns them
/// (when `keep`) and the stream's length; `None` when `bytes` ends first or does not add up.
fn inflate(bytes: &[u8], size: u64, keep: bool) -> Option<(Vec<u8>, usize)> {
    let mut inflater = Decompress::new(true);
    // One byte more than the object: the output never runs out before the stream's checksum.
    let mut out = vec![0u8; if keep { usize::try_from(size).ok()? + 1 } else { 0 }];
    let mut scratch = vec![0u8; 64 * 1024];
    let mut made = 0u64;
    loop {
        let before_in = inflater.total_in() as usize;
        let before_out = inflater.total_out();
        let target: &mut [u8] = if keep { &mut out[made as usize..] } else { &mut scratch };
        let status = inflater.decompress(&bytes[before_in..], target, FlushDecompress::None).ok()?;
        made = inflater.total_out();
        match status {
            Status::StreamEnd => {
                out.truncate(made as usize);
                return (made == size).then(|| (out, inflater.total_in() as usize));
            }
            _ if made > size => return None,
            _ if inflater.total_in() as usize == before_in && made == before_out => return None,
            _ => {}
        }
    }
}

impl BundleRepo {
    /// Fetches only the tag object of a whole bundle whose tip is a tag of something this
    /// repository has: `Ok(Some(keep))`, with the `.keep` file of its pack. `Ok(None)`: not
    /// possible, fetch the whole bundle.
    pub(super) async fn fetch_tag_object(
        &self,
        bundle: &RemoteBundle,
        pack_dir: &Path,
        events: &Events,
    ) -> Result<Option<Option<PathBuf>>, GitError> {
        let Some(format) = ObjectFormat::of_hex(&bundle.oid).filter(|_| bundle.refname.starts_with("refs/tags/"))
        else {
            return Ok(None);
        };
        for limit in PREFIX_READS {
            let end = limit.min(bundle.size);
            let prefix = match self.bucket.get_range(&bundle.key, 0..end, bundle.etag.as_deref()).await {
                Ok(Some(prefix)) => prefix,
                Ok(None) => return Ok(None),
                Err(e) => {
                    tracing::debug!(key = %bundle.key, error = %e, "cannot read the bundle's start");
                    return Ok(None);
                }
            };
            let meter = events.meter(format!("Receiving {}", bundle.refname), prefix.len() as u64);
            meter.add(prefix.len() as u64);
            meter.finish();
            let Ok(Some((parsed, header_len))) = header::parse_header(&prefix) else {
                return Ok(None);
            };
            if parsed.mismatch(&bundle.oid).is_some() || !parsed.prerequisites.is_empty() {
                return Ok(None);
            }
            match find_object(&prefix[header_len..], &bundle.oid, format) {
                Scan::Tag { entry, target } => {
                    if !self.git.has_object(&target).await? {
                        tracing::debug!(refname = %bundle.refname, %target, "the tag's target is not here");
                        return Ok(None);
                    }
                    return match self.index_one(bundle, &entry, format, pack_dir).await {
                        Ok(keep) => {
                            tracing::debug!(refname = %bundle.refname, read = end, "fetched only the tag object");
                            Ok(Some(keep))
                        }
                        Err(e) => {
                            tracing::debug!(refname = %bundle.refname, error = %e, "git index-pack refused the tag object alone");
                            Ok(None)
                        }
                    };
                }
                Scan::Unusable(why) => {
                    tracing::debug!(refname = %bundle.refname, %why, "the tag object alone will not do");
                    return Ok(None);
                }
                Scan::NeedMore if end == bundle.size => return Ok(None),
                Scan::NeedMore => {}
            }
        }
        Ok(None)
    }

    /// Indexes a pack of the one entry `entry`.
    async fn index_one(
        &self,
        bundle: &RemoteBundle,
        entry: &[u8],
        format: ObjectFormat,
        pack_dir: &Path,
    ) -> Result<Option<PathBuf>, GitError> {
        let mut pack = PackHeader { version: 2, objects: 1 }.to_bytes().to_vec();
        pack.extend_from_slice(entry);
        let mut hasher = format.hasher();
        hasher.update(&pack);
        pack.extend_from_slice(&hasher.finalize());
        let keep = keep_option(&bundle.refname);
        let printed = self.git.run_with_input(&["index-pack", "--stdin", &keep], &pack).await?;
        Ok(keep_file(&printed, pack_dir).0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn deflate(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    fn entry(kind: u8, content: &[u8]) -> Vec<u8> {
        let size = content.len();
        let mut out = vec![(kind << 4) | (size & 0x0f) as u8 | if size > 15 { 0x80 } else { 0 }];
        let mut rest = size >> 4;
        while rest > 0 {
            out.push((rest & 0x7f) as u8 | if rest > 0x7f { 0x80 } else { 0 });
            rest >>= 7;
        }
        out.extend(deflate(content));
        out
    }

    fn id(kind: &str, content: &[u8]) -> String {
        let mut hasher = ObjectFormat::Sha1.hasher();
        hasher.update(format!("{kind} {}\0", content.len()).as_bytes());
        hasher.update(content);
        hex::encode(hasher.finalize())
    }

    const COMMIT: &[u8] = b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\nauthor A <a@b> 1 +0000\ncommitter A <a@b> 1 +0000\n\nfirst commit, long enough to need a second size byte\n";

    fn tag() -> Vec<u8> {
        format!("object {}\ntype commit\ntag v1\ntagger A <a@b> 1 +0000\n\nrelease\n", id("commit", COMMIT))
            .into_bytes()
    }

    fn pack(entries: &[Vec<u8>]) -> Vec<u8> {
        let mut pack = PackHeader { version: 2, objects: entries.len() as u32 }.to_bytes().to_vec();
        entries.iter().for_each(|e| pack.extend_from_slice(e));
        pack
    }

    #[test]
    fn the_tag_object_is_found_after_the_commits_and_taken_as_stored() {
        let tag_entry = entry(OBJ_TAG, &tag());
        let pack = pack(&[entry(OBJ_COMMIT, COMMIT), tag_entry.clone(), entry(3, b"blob text")]);
        let scan = find_object(&pack, &id("tag", &tag()), ObjectFormat::Sha1);
        assert_eq!(scan, Scan::Tag { entry: tag_entry, target: id("commit", COMMIT) });
    }

    #[test]
    fn a_prefix_cut_before_the_tag_asks_for_more() {
        let pack = pack(&[entry(OBJ_COMMIT, COMMIT), entry(OBJ_TAG, &tag())]);
        for cut in [5, PACK_HEADER_BYTES as usize + 3, pack.len() - 4] {
            assert_eq!(
                find_object(&pack[..cut], &id("tag", &tag()), ObjectFormat::Sha1),
                Scan::NeedMore,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_lightweight_tag_is_a_commit_and_needs_the_whole_bundle() {
        let pack = pack(&[entry(OBJ_COMMIT, COMMIT)]);
        assert!(matches!(find_object(&pack, &id("commit", COMMIT), ObjectFormat::Sha1), Scan::Unusable(_)));
    }

    #[test]
    fn deltas_are_stepped_over() {
        let mut ref_delta = vec![(OBJ_REF_DELTA << 4) | 3];
        ref_delta.extend([7u8; 20]);
        ref_delta.extend(deflate(b"abc"));
        let mut ofs_delta = vec![(OBJ_OFS_DELTA << 4) | 3, 0x81, 0x05];
        ofs_delta.extend(deflate(b"xyz"));
        let pack = pack(&[ref_delta, ofs_delta, entry(OBJ_TAG, &tag())]);
        assert!(matches!(find_object(&pack, &id("tag", &tag()), ObjectFormat::Sha1), Scan::Tag { .. }));
    }

    #[test]
    fn an_entry_whose_size_lies_is_not_taken() {
        let mut lying = entry(OBJ_TAG, &tag());
        lying[0] ^= 0x01;
        let pack = pack(&[lying]);
        assert!(!matches!(find_object(&pack, &id("tag", &tag()), ObjectFormat::Sha1), Scan::Tag { .. }));
    }
}
