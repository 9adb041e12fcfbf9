//! The commit point of every change to a native remote: one conditional write of the root
//! (`If-Match` on the version it was built on, `If-None-Match: *` for the first), confirmed by
//! reading it back. S3 decides conditional writes atomically; stores that check the condition
//! and then write without a lock (moto, s3s-fs) can answer 200 to two writers, so a commit is
//! ours only if the root read back is ours or names ours among its ancestors.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;

use super::manifest::{self, RefTable, Root};
use super::{NativeError, NativeRepo, Snapshot, root_key, shard_key};
use crate::bucket::{Conditional, PutOptions};
use crate::store::StoreError;

/// Shards written at once.
const SHARDS_IN_FLIGHT: usize = 8;
/// Commits tried before a change gives up to others that keep winning.
pub(super) const COMMIT_ATTEMPTS: u32 = 24;

impl NativeRepo {
    /// Makes `next`, built on `base`, with `refs` as its ref table, the remote's state. Returns
    /// whether this commit won; a lost one changed nothing.
    pub(super) async fn commit(&self, base: &Snapshot, mut next: Root, refs: &RefTable) -> Result<bool, StoreError> {
        // A pack made again under a retired name (the same objects repacked) is no longer retired.
        let named: HashSet<String> = next.packs.iter().map(|p| p.name.clone()).collect();
        next.retired.retain(|r| !named.contains(&r.name));
        let shards = manifest::split(refs);
        next.shards = shards.iter().map(|s| s.as_ref().map(|(name, _)| name.clone())).collect();
        let existing: HashSet<&String> = base.root.shards.iter().flatten().collect();
        let count = shards.len();
        // Owned items: closures over borrowed ones trip the compiler's Send check.
        let new_shards: Vec<(usize, String, Vec<u8>)> = shards
            .into_iter()
            .enumerate()
            .filter_map(|(index, shard)| shard.map(|(name, bytes)| (index, name, bytes)))
            .filter(|(_, name, _)| !existing.contains(name))
            .collect();
        let written: Vec<Result<(), StoreError>> = futures::stream::iter(new_shards)
            .map(|(index, name, bytes)| async move {
                let key = shard_key(&self.layout, &name);
                self.bucket.put_bytes(&key, bytes.clone(), PutOptions::default()).await?;
                if let Ok(refs) = manifest::decode_shard(&bytes, &name, index, count) {
                    self.caches.keep_shard(&name, Arc::new(refs));
                }
                Ok(())
            })
            .buffer_unordered(SHARDS_IN_FLIGHT)
            .collect()
            .await;
        written.into_iter().collect::<Result<Vec<()>, _>>()?;

        let options = match &base.etag {
            Some(etag) => PutOptions { if_match: Some(etag.clone()), ..Default::default() },
            None => PutOptions { if_none_match_any: true, ..Default::default() },
        };
        let started = Instant::now();
        match self.bucket.put_bytes(&root_key(&self.layout), next.to_bytes(), options).await? {
            Conditional::Refused { .. } => return Ok(false),
            Conditional::Written => {}
        }
        // A store that checks and then writes lets a rival's write land shortly after ours; give
        // it the time a write takes before looking. S3 itself needs no such wait.
        if self.config.s3.endpoint.is_some() {
            tokio::time::sleep((started.elapsed() * 2).clamp(Duration::from_millis(20), Duration::from_millis(500)))
                .await;
        }
        let (now, _) = self.read_root().await?;
        let won = now.descends_from(&next.commit);
        tracing::debug!(generation = next.generation, won, "committed the native root");
        Ok(won)
    }

    /// Runs `change` on a fresh snapshot and commits what it returns, again on a fresh snapshot
    /// each time another commit won the race. `change` returns `None` when there is nothing to
    /// commit, and its own answer either way.
    pub(super) async fn commit_with<'a, T, E, F>(&self, mut change: F) -> Result<T, E>
    where
        F: FnMut(Arc<Snapshot>) -> BoxFuture<'a, Result<(Option<(Root, RefTable)>, T), E>>,
        E: From<StoreError>,
    {
        for attempt in 0..COMMIT_ATTEMPTS {
            let snapshot = Arc::new(self.snapshot().await?);
            let (next, answer) = change(snapshot.clone()).await?;
            let Some((root, refs)) = next else { return Ok(answer) };
            if self.commit(&snapshot, root, &refs).await? {
                return Ok(answer);
            }
            tracing::debug!(attempt, "another commit won; trying again on the new root");
            backoff(attempt).await;
        }
        Err(StoreError::from(NativeError::Contended).into())
    }
}

/// A short random wait that grows with the attempts, so that rivals stop colliding.
pub(super) async fn backoff(attempt: u32) {
    let ceiling = 10u64 << attempt.min(5);
    tokio::time::sleep(Duration::from_millis(fastrand::u64(1..=ceiling))).await;
}
