//! Compaction: every push adds a pack, so after a push that breaks the geometric rule (sorted by
//! object count, each pack holds at least twice the objects of the next smaller one, as
//! `git repack --geometric=2` keeps them) the pusher's daemon merges the small packs into one, in
//! the background, and commits the new list with the same conditional write as a push. A remote
//! of N objects therefore holds at most log2(N) + 1 packs after any number of pushes.
//!
//! The merged pack's tips are the union of the merged packs' tips, so a repository that has
//! what the old packs held does not download the merged one. Replaced packs leave the root at
//! once but stay in the bucket, listed as retired, until `git s3 doctor` sweeps them after the
//! grace period: a fetch that read the old root still finds them.

use std::collections::BTreeSet;
use std::time::{SystemTime, UNIX_EPOCH};

use super::NativeRepo;
use super::manifest::{PackEntry, Retired};
use crate::progress::Events;
use crate::store::StoreError;

/// Packs whose objects are merged, by index into `objects`, smallest first; empty when the packs
/// already keep the geometric rule.
pub(super) fn packs_to_merge(objects: &[u64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..objects.len()).collect();
    order.sort_by_key(|&i| objects[i]);
    // Above `split` the packs keep the rule; below it they are merged.
    let mut split = 0;
    for i in (1..order.len()).rev() {
        if objects[order[i]] < 2 * objects[order[i - 1]] {
            split = i;
            break;
        }
    }
    if split == 0 {
        return Vec::new();
    }
    let mut merged: u64 = order[..split].iter().map(|&i| objects[i]).sum();
    while split < order.len() && objects[order[split]] < 2 * merged {
        merged += objects[order[split]];
        split += 1;
    }
    if split < 2 { Vec::new() } else { order[..split].to_vec() }
}

pub(super) fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl NativeRepo {
    /// Merges the small packs of the current root into one and commits it. Work lost to a
    /// rival (another daemon compacting, a push that changed the packs) is given up: the next
    /// push tries again.
    pub(super) async fn compact(&self) -> Result<Option<String>, StoreError> {
        let snapshot = self.snapshot().await?;
        let objects: Vec<u64> = snapshot.root.packs.iter().map(|p| p.objects).collect();
        let chosen: Vec<PackEntry> =
            packs_to_merge(&objects).into_iter().map(|i| snapshot.root.packs[i].clone()).collect();
        if chosen.is_empty() {
            return Ok(None);
        }
        let names: BTreeSet<String> = chosen.iter().map(|p| p.name.clone()).collect();
        tracing::info!(packs = chosen.len(), remote = %self.layout, "compacting the remote's small packs");
        let dir = self.scratch.tempdir("native-compact-").map_err(StoreError::TempDir)?;
        let object_format = snapshot.root.object_format.as_deref().unwrap_or("sha1");
        let git = self.git.scratch_repository(dir.path(), object_format).await?;
        let pack_dir = dir.path().join("objects/pack");
        let quiet = Events::unobserved();
        let keeps = self.download(&git, chosen.clone(), &pack_dir, &quiet).await?;
        for keep in keeps {
            let _ = std::fs::remove_file(keep);
        }
        let input: String = chosen.iter().map(|p| format!("pack-{}.pack\n", p.name)).collect();
        let merged_name = self.pack_objects_with(&git, &["--stdin-packs"], &dir.path().join("merged"), input).await?;
        // The merged pack's objects are reachable from its tips only if every merged pack's are.
        let mut tips = BTreeSet::new();
        for pack in &chosen {
            let Some(pack_tips) = self.read_tips(&pack.name).await? else {
                tracing::warn!(pack = %pack.name, "a pack's tips cannot be read; not compacting");
                return Ok(None);
            };
            tips.extend(pack_tips.iter().cloned());
        }
        let merged = self.upload_pack(dir.path(), "merged", &merged_name, &tips, &quiet).await?;
        let Some(mut merged) = merged else { return Ok(None) };
        merged.replaces = names.iter().cloned().collect();
        let names = &names;
        let merged_entry = &merged;
        let committed = self
            .commit_with(move |snapshot| {
                Box::pin(async move {
                    if !names.iter().all(|n| snapshot.root.has_pack(n)) {
                        return Ok::<_, StoreError>((None, false));
                    }
                    let mut next = snapshot.root.successor();
                    let at = next.packs.iter().position(|p| names.contains(&p.name)).unwrap_or(0);
                    next.packs.retain(|p| !names.contains(&p.name));
                    next.packs.insert(at.min(next.packs.len()), merged_entry.clone());
                    let retired_at = now_s();
                    next.retired.extend(names.iter().map(|name| Retired { name: name.clone(), at: retired_at }));
                    Ok((Some((next, snapshot.refs.clone())), true))
                })
            })
            .await?;
        // A pack given up is left to doctor's sweep: another compaction that merged the same
        // packs made the same pack, under the same name, and may be committing it right now.
        if !committed {
            tracing::info!("the packs changed during the compaction; giving it up");
            return Ok(None);
        }
        tracing::info!(packs = names.len(), merged = %merged.name, "compacted the remote's packs");
        Ok(Some(format!("compacted {} packs into one", names.len())))
    }

    /// Garbage collection, when due (`Root::gc_due`): every pack downloaded (the whole history)
    /// into a scratch repository with the remote's refs, `git repack -a -d` there (objects no
    /// ref reaches are dropped), and the one pack it makes committed in place of all of them.
    /// The replaced packs are retired, so fetches in flight still find them until the grace
    /// period ends; pushes that packed against the old root pack again (the `gc` count moved).
    pub(super) async fn collect_garbage(&self) -> Result<Option<String>, StoreError> {
        let snapshot = self.snapshot().await?;
        if !snapshot.root.gc_due() || snapshot.refs.is_empty() {
            return Ok(None);
        }
        let names: BTreeSet<String> = snapshot.root.packs.iter().map(|p| p.name.clone()).collect();
        tracing::info!(packs = names.len(), remote = %self.layout, "collecting garbage: repacking the whole history");
        let dir = self.scratch.tempdir("native-gc-").map_err(StoreError::TempDir)?;
        let object_format = snapshot.root.object_format.as_deref().unwrap_or("sha1");
        let git = self.git.scratch_repository(dir.path(), object_format).await?;
        let quiet = Events::unobserved();
        let keeps = self.download(&git, snapshot.root.packs.clone(), &dir.path().join("objects/pack"), &quiet).await?;
        for keep in keeps {
            let _ = std::fs::remove_file(keep);
        }
        let updates: String = snapshot.refs.iter().map(|(name, oid)| format!("update {name} {oid}\n")).collect();
        git.update_refs(&updates).await?;
        git.run(&["repack", "-a", "-d", "-q", "--no-write-bitmap-index"]).await?;
        let pack_dir = dir.path().join("objects/pack");
        let packs: Vec<String> = std::fs::read_dir(&pack_dir)
            .map_err(StoreError::TempDir)?
            .filter_map(|entry| {
                let name = entry.ok()?.file_name().into_string().ok()?;
                Some(name.strip_prefix("pack-")?.strip_suffix(".pack")?.to_string())
            })
            .collect();
        let [repacked] = packs.as_slice() else {
            tracing::warn!(packs = packs.len(), "git repack -a left other than one pack; giving the collection up");
            return Ok(None);
        };
        let tips: BTreeSet<String> = snapshot.refs.values().cloned().collect();
        let Some(mut entry) = self.upload_pack(&pack_dir, "pack", repacked, &tips, &quiet).await? else {
            return Ok(None);
        };
        // What a collection keeps, every collected pack held.
        entry.replaces = names.iter().cloned().collect();
        let names = &names;
        let entry_ref = &entry;
        let collected = &snapshot;
        let committed = self
            .commit_with(move |snapshot| {
                Box::pin(async move {
                    // Only over exactly what was collected: a push committed since may rest on
                    // objects this collection dropped (it packed against an older root).
                    if snapshot.root.packs != collected.root.packs || snapshot.refs != collected.refs {
                        return Ok::<_, StoreError>((None, false));
                    }
                    let mut next = snapshot.root.successor();
                    next.packs.retain(|p| !names.contains(&p.name));
                    next.packs.insert(0, entry_ref.clone());
                    let retired_at = now_s();
                    next.retired.extend(names.iter().map(|name| Retired { name: name.clone(), at: retired_at }));
                    next.gc += 1;
                    next.rewrites = 0;
                    next.gc_bytes = next.pack_bytes();
                    Ok((Some((next, snapshot.refs.clone())), true))
                })
            })
            .await?;
        if !committed {
            tracing::info!("the packs changed during the collection; giving it up");
            return Ok(None);
        }
        tracing::info!(dropped = names.len(), kept = %entry.name, "collected the remote's garbage");
        let before: u64 = snapshot.root.pack_bytes();
        Ok(Some(format!("collected garbage: {before} bytes in {} packs became {} in one", names.len(), entry.bytes)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_packs_are_merged_until_the_packs_are_geometric() {
        assert!(packs_to_merge(&[1000]).is_empty());
        assert!(packs_to_merge(&[1000, 400, 100, 20]).is_empty());
        let mut merged = packs_to_merge(&[1000, 5, 5]);
        merged.sort();
        assert_eq!(merged, vec![1, 2]);
        let mut merged = packs_to_merge(&[1000, 600, 3]);
        merged.sort();
        assert_eq!(merged, vec![0, 1, 2]);
    }

    #[test]
    fn pushes_leave_logarithmically_many_packs() {
        let mut packs: Vec<u64> = vec![5000];
        for push in 0..10_000u64 {
            packs.push(1 + push % 7);
            let merge = packs_to_merge(&packs);
            if !merge.is_empty() {
                let total: u64 = merge.iter().map(|&i| packs[i]).sum();
                let mut kept: Vec<u64> =
                    packs.iter().enumerate().filter(|(i, _)| !merge.contains(i)).map(|(_, &o)| o).collect();
                kept.push(total);
                packs = kept;
            }
            let objects: u64 = packs.iter().sum();
            assert!(packs.len() as f64 <= (objects as f64).log2() + 1.0, "{packs:?}");
        }
    }
}
