//! Fetches of the change only. A composed bundle records in its user metadata where each
//! appended segment starts and which tip it was appended to. A reader that has one of those tips
//! downloads only the bytes after it (one ranged GET), wraps them as a pack of their own (a header
//! with their object count, a SHA-1 trailer) and lets `git index-pack --fix-thin` resolve their
//! deltas against objects it already has. Whatever does not add up falls back to the whole bundle.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use sha1::{Digest, Sha1};
use tokio::io::AsyncWriteExt;

use super::BundleRepo;
use super::fetch::{RemoteBundle, keep_file, pipe_to_index_pack};
use super::pack::{PackHeader, TRAILER_BYTES};
use crate::bucket::Body;
use crate::git::{GitError, last_line};
use crate::progress::Events;

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
    ) -> Result<Option<PathBuf>, NoTail> {
        let segments = &bundle.record.segments;
        if segments.is_empty() {
            return Err(NoTail("the bundle records no appended segments".into()));
        }
        let bases: Vec<&str> = segments.iter().map(|s| s.base.as_str()).collect();
        let present = self.git.present(&bases).await?;
        // The earliest segment we can start at: every later one may delta against it.
        let from = segments
            .iter()
            .position(|s| present.contains(&s.base))
            .ok_or_else(|| NoTail("this repository has none of the tips the bundle records".into()))?;
        let start = segments[from].offset;
        let end = bundle.size.saturating_sub(TRAILER_BYTES);
        let objects = segments[from..].iter().try_fold(0u32, |sum, s| sum.checked_add(s.objects));
        let (Some(objects), true) = (objects, start < end) else {
            return Err(NoTail("the bundle's record does not fit its size".into()));
        };
        let Body { mut body, len, .. } = self
            .bucket
            .get_from(&bundle.key, start, bundle.etag.as_deref())
            .await?
            .ok_or_else(|| NoTail("the bundle is gone".into()))?;
        if len != bundle.size - start {
            return Err(NoTail(format!("S3 sent {len} bytes from {start}, not the rest of the bundle")));
        }
        tracing::debug!(
            refname = %bundle.refname, base = %segments[from].base, bytes = end - start, objects,
            "fetching only the change: the segments after a tip this repository has"
        );

        let mut child = self
            .git
            .command(["index-pack", "--stdin", "--fix-thin", &format!("--keep=git-remote-s3 fetch {}", bundle.refname)])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(GitError::Spawn)?;
        let mut stdin = pipe_to_index_pack(&mut child)?;
        let meter = events.meter(format!("Receiving {}", bundle.refname), end - start);
        let feed = async {
            let header = PackHeader { version: 2, objects }.to_bytes();
            let mut hasher = Sha1::new();
            hasher.update(header);
            stdin.write_all(&header).await?;
            // The bundle's own trailer closes the response: everything before it is objects.
            let mut left = end - start;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(std::io::Error::other)?;
                meter.add(chunk.len() as u64);
                let take = chunk.len().min(left as usize);
                left -= take as u64;
                hasher.update(&chunk[..take]);
                stdin.write_all(&chunk[..take]).await?;
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
        Ok(keep)
    }
}

/// Removes a pack this fetch made and could not use (with its index and keep file).
async fn remove_pack(pack_dir: &Path, hash: &str) {
    for ext in ["pack", "idx", "rev", "keep"] {
        let _ = tokio::fs::remove_file(pack_dir.join(format!("pack-{hash}.{ext}"))).await;
    }
}
