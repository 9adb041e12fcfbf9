//! Fetches of the change only. A composed bundle records in its user metadata where each
//! appended segment starts and which tip it was appended to. A reader that has one of those tips
//! downloads only the bytes after it (one ranged GET), wraps them as a pack of their own (a header
//! with their object count, a trailer in the repository's hash) and lets `git index-pack --fix-thin` resolve their
//! deltas against objects it already has. Whatever does not add up falls back to the whole bundle.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tempfile::TempPath;
use tokio::io::AsyncWriteExt;

use super::BundleRepo;
use super::compose::{Assembly, Composer, Piece, pack_from_repository, repository_pack};
use super::fetch::RemoteBundle;
use super::pack::{self, PACK_HEADER_BYTES, PackHeader, Segment};
use super::pack_cache::{Appended, CachedPack, oids_of};
use crate::git::{Git, GitError, last_line};
use crate::object_format::{ObjectFormat, Oid};
use crate::progress::Events;
use crate::store::download::{index_pack, keep_file};

/// Why the change alone could not be fetched (the whole bundle is, then).
#[derive(Debug)]
pub(super) struct NoTail(pub String);

impl<E: std::fmt::Display> From<E> for NoTail {
    fn from(e: E) -> Self {
        NoTail(e.to_string())
    }
}

impl BundleRepo {
    /// Fetches only the segments of `bundle` after a tip this repository has. Returns the `.keep`
    /// file of the new pack.
    pub(super) async fn fetch_tail(
        &self,
        bundle: &RemoteBundle,
        pack_dir: &Path,
        events: &Events,
    ) -> Result<(Option<PathBuf>, Option<CacheFill>), NoTail> {
        let segments = &bundle.record.segments;
        if segments.is_empty() {
            return Err(NoTail("the bundle records no appended segments".into()));
        }
        let bases: Vec<&str> = segments.iter().map(|s| s.base.as_str()).collect();
        let present = self.git.present(&bases).await?;
        // The latest segment whose base is here: every segment's base is reachable from the one
        // before it and that segment's objects, so what follows needs nothing else.
        let from = segments
            .iter()
            .rposition(|s| present.contains(&s.base))
            .ok_or_else(|| NoTail("this repository has none of the tips the bundle records".into()))?;
        let format = ObjectFormat::of_hex(&bundle.oid).ok_or_else(|| NoTail("the bundle names no object".into()))?;
        let start = segments[from].offset;
        let end = bundle.size.saturating_sub(format.trailer_bytes());
        let objects = segments[from..].iter().try_fold(0u32, |sum, s| sum.checked_add(s.objects));
        let (Some(objects), true) = (objects, start < end) else {
            return Err(NoTail("the bundle's record does not fit its size".into()));
        };
        let mut body = self
            .bucket
            .get_from(&bundle.key, start, bundle.etag.as_deref())
            .await?
            .ok_or_else(|| NoTail("the bundle is gone".into()))?;
        let len = body.len;
        if len != bundle.size - start {
            return Err(NoTail(format!("S3 sent {len} bytes from {start}, not the rest of the bundle")));
        }
        // With the pack this bundle was built on at hand, the tail completes a copy of the new
        // pack for the pack cache: the next push composes without downloading anything.
        let prefix = self.local_prefix(bundle, &segments[from], format).await;
        let tail_copy = prefix.as_ref().and_then(|_| self.composer.packs.temp_path("tail").ok());
        let mut copy = tail_copy.as_ref().and_then(|path| std::fs::File::create(path).ok());
        let mut trailer = Vec::with_capacity(format.raw_len());
        tracing::debug!(
            refname = %bundle.refname, base = %segments[from].base, bytes = end - start, objects,
            "fetching only the change: the segments after a tip this repository has"
        );

        let (child, mut stdin) = index_pack(&self.git, &bundle.refname, true)?;
        let meter = events.meter(format!("Receiving {}", bundle.refname), end - start);
        let feed = async {
            let header = PackHeader { version: 2, objects }.to_bytes();
            let mut hasher = format.hasher();
            hasher.update(&header);
            stdin.write_all(&header).await?;
            // The bundle's own trailer closes the response: everything before it is objects.
            let mut left = end - start;
            while let Some(chunk) = body.next_chunk().await.map_err(std::io::Error::other)? {
                meter.add(chunk.len() as u64);
                let take = chunk.len().min(left as usize);
                left -= take as u64;
                hasher.update(&chunk[..take]);
                stdin.write_all(&chunk[..take]).await?;
                trailer.extend_from_slice(&chunk[take..]);
                // Page-cache writes of what just arrived: brief enough to do here.
                if let Some(file) = &mut copy
                    && file.write_all(&chunk[..take]).is_err()
                {
                    copy = None;
                }
            }
            if left > 0 {
                return Err(std::io::Error::other("the download ended early"));
            }
            stdin.write_all(&hasher.finalize()).await?;
            stdin.shutdown().await?;
            drop(stdin);
            Ok::<(), std::io::Error>(())
        };
        let (fed, output) = tokio::join!(feed, child.wait_with_output());
        let copied = copy.is_some();
        drop(copy);
        let output = output.map_err(GitError::Spawn)?;
        if !output.status.success() {
            return Err(NoTail(format!("git index-pack: {}", last_line(&output.stderr))));
        }
        fed?;
        meter.finish();
        let (keep, pack) = keep_file(&output.stdout, pack_dir);
        // Everything the wanted tip reaches must be here now, or the pack is of no use.
        let connected = self
            .git
            .succeeds(&["rev-list", "--objects", "--quiet", &bundle.oid, "--not", &segments[from].base])
            .await?;
        if !connected {
            if let Some(pack) = pack {
                remove_pack(pack_dir, &pack).await;
            }
            return Err(NoTail("the appended objects need objects this repository lacks".into()));
        }
        let fill = match (prefix, tail_copy, pack, copied) {
            (Some(prefix), Some(file), Some(pack), true) => {
                Some(CacheFill { prefix, tail: TailCopy { file, objects, trailer: hex::encode(&trailer), pack } })
            }
            _ => None,
        };
        Ok((keep, fill))
    }

    /// Where the pack `segment` was appended to is at hand: the pack cache, or this repository.
    async fn local_prefix(&self, bundle: &RemoteBundle, segment: &Segment, format: ObjectFormat) -> Option<Prefix> {
        // Composed bundles carry the header `git bundle create` writes for one ref.
        let header_len = pack::bundle_header(&bundle.oid, &bundle.refname).len() as u64;
        let pack_len = segment.offset.checked_sub(header_len)? + format.trailer_bytes();
        if let Some(hit) = self.composer.packs.get(&segment.base_trailer, pack_len) {
            return Some(Prefix::Cached(hit));
        }
        match repository_pack(&self.git, &segment.base_trailer, pack_len).await {
            Ok(Some(_)) => Some(Prefix::InRepository { trailer: segment.base_trailer.clone(), pack_len }),
            _ => None,
        }
    }

    /// Completes the copy of the new pack in the background (the fetch does not wait): checks
    /// that the pack it was built on and the tail hash to the bundle's trailer, then caches it. A
    /// push that wants it meanwhile waits for it. Started once the fetch's packs are in place in
    /// the repository (the pack it was built on may be one of them).
    pub(super) async fn fill_cache(&self, CacheFill { prefix, tail }: CacheFill) {
        let bringing = self.composer.bringing(&tail.trailer).lock_owned().await;
        let (composer, git) = (self.composer.clone(), self.git.clone());
        tokio::spawn(async move {
            let _bringing = bringing;
            if let Err(why) = remember_tail(&composer, &git, prefix, tail).await {
                tracing::debug!(%why, "the fetched pack is not cached");
            }
        });
    }
}

/// What a tail fetch leaves for the pack cache: the new pack's prefix at hand and its tail.
pub(super) struct CacheFill {
    prefix: Prefix,
    tail: TailCopy,
}

/// The objects of a tail fetch, copied as they arrived, and what they make of the pack.
struct TailCopy {
    file: TempPath,
    objects: u32,
    /// The whole new pack's trailer (the bundle's last 20 or 32 bytes).
    trailer: String,
    /// The name (hash) of the pack git indexed from the fetched objects (with the delta bases
    /// `--fix-thin` added), in the repository once the cache fill starts.
    pack: String,
}

/// The pack a tail was appended to, at hand.
enum Prefix {
    Cached(CachedPack),
    /// The caller's `pack-<trailer>.pack`, taken into the cache when the tail is.
    InRepository {
        trailer: String,
        pack_len: u64,
    },
}

async fn remember_tail(composer: &Arc<Composer>, git: &Git, prefix: Prefix, tail: TailCopy) -> Result<(), String> {
    let prefix = match prefix {
        Prefix::Cached(cached) => cached,
        Prefix::InRepository { trailer, pack_len } => pack_from_repository(git, composer, &trailer, pack_len)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the pack it was built on is gone from the repository")?,
    };
    let format = prefix.format().map_err(|e| e.to_string())?;
    let len = tokio::fs::metadata(&tail.file).await.map_err(|e| e.to_string())?.len();
    let prefix_len: u64 = prefix.chain.iter().map(|l| l.range.end - l.range.start).sum();
    if composer.packs.get(&tail.trailer, PACK_HEADER_BYTES + prefix_len + len + format.trailer_bytes()).is_some() {
        // This daemon composed the bundle itself.
        return Ok(());
    }
    let chain = prefix.chain.clone();
    let in_prefix = tokio::task::spawn_blocking(move || oids_of(&chain, format))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    // The index also lists the delta bases --fix-thin copied in: those are in the prefix.
    let index = git.git_path("objects/pack").await.map_err(|e| e.to_string())?.join(format!("pack-{}.idx", tail.pack));
    let oids: Vec<Oid> = git
        .index_object_ids(&index)
        .await
        .map_err(|e| e.to_string())?
        .iter()
        .filter_map(|oid| Oid::from_hex(oid))
        .filter(|oid| !in_prefix.contains(oid))
        .collect();
    if oids.len() != tail.objects as usize {
        return Err(format!("the fetched pack holds {} new objects, the record says {}", oids.len(), tail.objects));
    }
    let objects = prefix.objects.checked_add(tail.objects).ok_or("more objects than a pack can count")?;
    let mut pieces = vec![Piece::Bytes(PackHeader { version: 2, objects }.to_bytes().to_vec())];
    pieces.extend(prefix.chain.iter().map(|l| Piece::File { path: l.objects.clone(), range: l.range.clone() }));
    pieces.push(Piece::File { path: tail.file.to_path_buf(), range: 0..len });
    let whole = Assembly { pieces };
    let composer = composer.clone();
    tokio::task::spawn_blocking(move || {
        // Only bytes that are the bundle's pack, to the last bit, may be composed from later.
        let hash = whole.hash(0..whole.len(), format).map_err(|e| e.to_string())?;
        if hex::encode(hash) != tail.trailer {
            return Err("the pack it was built on and the tail do not make the bundle's pack".to_string());
        }
        let appended =
            Appended { file: &tail.file, range: 0..len, objects: tail.objects, oids: &oids, trailer: &tail.trailer };
        composer.packs.extend(&prefix, &appended).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Removes a pack this fetch made and could not use (with its index and keep file).
async fn remove_pack(pack_dir: &Path, hash: &str) {
    for ext in ["pack", "idx", "rev", "keep"] {
        let _ = tokio::fs::remove_file(pack_dir.join(format!("pack-{hash}.{ext}"))).await;
    }
}
