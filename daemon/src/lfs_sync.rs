//! `git s3 lfs pull|push`: the LFS objects of a set of commits moved at once, at the speed of the
//! network rather than one git-lfs request at a time. git-lfs's own listing (`git lfs ls-files
//! --json`) says which pointers the commits hold; objects already where they are going are left
//! alone (pull: in git-lfs's storage; push: a HEAD per object for a few, one listing of
//! `<prefix>/lfs/` for many); the rest move many at once through the daemon's scheduler, large
//! ones in parallel ranges, each checked against its SHA-256 before it is placed where git-lfs
//! keeps it.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::git::Git;
use crate::layout::is_lfs_oid;
use crate::lfs::{LfsError, LfsStore, blocking};
use crate::progress::Events;

/// Objects moving at once; the scheduler bounds the S3 requests and bytes in flight beneath.
const OBJECTS_IN_FLIGHT: usize = 32;
/// Up to this many objects, a push asks the bucket about each (HEAD); past it, it lists
/// `<prefix>/lfs/` once. A listing takes one request per 1,000 objects the remote holds, one
/// after the other (each page needs the last one's token), and S3 prices a LIST like 12.5 HEADs
/// (US$0.005 against 0.0004 per 1,000); HEADs go out at once. How many objects the remote holds
/// is unknown until it is listed, so HEADs are used only where they cost no more than the
/// smallest listing, one page: at most 12 of them, in one round trip.
const HEAD_AT_MOST_OBJECTS: usize = 12;

#[derive(Debug, Clone, Default)]
pub struct SyncRequest {
    pub push: bool,
    /// Commits whose objects move; empty: HEAD's.
    pub refs: Vec<String>,
    pub all: bool,
    pub include: String,
    pub exclude: String,
    pub dry_run: bool,
}

/// One LFS object a commit points to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer {
    pub oid: String,
    pub size: u64,
    /// A path it is checked out at (the first git-lfs named).
    pub path: String,
}

#[derive(Debug, Default)]
pub struct SyncOutcome {
    pub objects: u64,
    pub present: u64,
    pub moved: u64,
    pub moved_bytes: u64,
    pub elapsed: Duration,
    pub failures: Vec<String>,
    pub would_move: Vec<Pointer>,
}

/// Moves the objects `request` names between the repository and the bucket.
pub async fn sync(
    store: &LfsStore,
    git: &Git,
    request: &SyncRequest,
    events: &Events,
) -> Result<SyncOutcome, LfsError> {
    let started = Instant::now();
    let pointers = pointers(git, request).await?;
    let (mut to_move, present) = if request.push {
        missing_in_bucket(store, pointers.values()).await?
    } else {
        missing_locally(store, pointers.values()).await?
    };
    let mut outcome = SyncOutcome { objects: pointers.len() as u64, present, ..Default::default() };
    if request.dry_run {
        outcome.moved = to_move.len() as u64;
        outcome.moved_bytes = to_move.iter().map(|p| p.size).sum();
        outcome.would_move = to_move;
        return Ok(outcome);
    }
    // Largest first: the big ones' ranges keep every connection busy until the end, rather
    // than one big object starting last and finishing alone.
    to_move.sort_by_key(|pointer| std::cmp::Reverse(pointer.size));
    let total: u64 = to_move.iter().map(|p| p.size).sum();
    let title = if request.push { "Uploading LFS objects" } else { "Downloading LFS objects" };
    let meter = events.object_meter(title, total, to_move.len() as u64);
    let counter = meter.counter();
    let results: Vec<(Pointer, Result<(), LfsError>)> = futures::stream::iter(to_move)
        .map(|pointer| {
            let (counter, meter) = (&counter, &meter);
            async move {
                let result = if request.push {
                    upload(store, &pointer, counter).await
                } else {
                    store.download_into_place(&pointer.oid, pointer.size, counter).await
                };
                if result.is_ok() {
                    meter.object_done();
                }
                (pointer, result)
            }
        })
        .buffer_unordered(OBJECTS_IN_FLIGHT)
        .collect()
        .await;
    meter.finish();
    for (pointer, result) in results {
        match result {
            Ok(()) => {
                outcome.moved += 1;
                outcome.moved_bytes += pointer.size;
            }
            Err(e) => outcome.failures.push(format!("{} ({}): {e}", pointer.path, pointer.oid)),
        }
    }
    // `false` (a bare repository, or inside `.git`) still exits 0.
    if !request.push && git.run(&["rev-parse", "--is-inside-work-tree"]).await.is_ok_and(|inside| inside == "true") {
        // git-lfs writes the work tree from what is now in its storage.
        git.run(&["lfs", "checkout"]).await?;
    }
    outcome.elapsed = started.elapsed();
    Ok(outcome)
}

/// Every LFS object the requested commits point to, by id, as git-lfs lists them.
async fn pointers(git: &Git, request: &SyncRequest) -> Result<BTreeMap<String, Pointer>, LfsError> {
    let mut base = vec!["lfs", "ls-files", "--json"];
    if !request.include.is_empty() {
        base.extend(["--include", request.include.as_str()]);
    }
    if !request.exclude.is_empty() {
        base.extend(["--exclude", request.exclude.as_str()]);
    }
    let mut listings = Vec::new();
    if request.all {
        listings.push([base.clone(), vec!["--all"]].concat());
    } else if request.refs.is_empty() {
        listings.push(base.clone());
    } else {
        for refname in &request.refs {
            // `--` would end the options, not name a path: git-lfs takes one ref here.
            listings.push([base.clone(), vec![refname.as_str()]].concat());
        }
    }
    let mut pointers = BTreeMap::new();
    for args in listings {
        let json = git.run(&args).await?;
        for pointer in parse_ls_files(&json)? {
            pointers.entry(pointer.oid.clone()).or_insert(pointer);
        }
    }
    Ok(pointers)
}

/// `git lfs ls-files --json`: `{"files": [{"name", "size", "oid", …}]}` (`null` when none).
fn parse_ls_files(json: &str) -> Result<Vec<Pointer>, LfsError> {
    #[derive(serde::Deserialize)]
    struct Listing {
        files: Option<Vec<File>>,
    }
    #[derive(serde::Deserialize)]
    struct File {
        name: String,
        size: u64,
        oid: String,
    }
    let listing: Listing = serde_json::from_str(json).map_err(|e| LfsError::Listing(e.to_string()))?;
    listing
        .files
        .unwrap_or_default()
        .into_iter()
        .map(|f| {
            if is_lfs_oid(&f.oid) {
                Ok(Pointer { oid: f.oid, size: f.size, path: f.name })
            } else {
                Err(LfsError::BadOid(f.oid))
            }
        })
        .collect()
}

/// Pointers whose objects git-lfs's storage lacks (or holds at another size), and how many it has.
async fn missing_locally<'a>(
    store: &LfsStore,
    pointers: impl Iterator<Item = &'a Pointer>,
) -> Result<(Vec<Pointer>, u64), LfsError> {
    let wanted: Vec<(Pointer, PathBuf)> =
        pointers.map(|pointer| (pointer.clone(), store.object_path(&pointer.oid))).collect();
    let total = wanted.len() as u64;
    // One trip to the blocking pool for all of them, not one per object.
    let missing: Vec<Pointer> = blocking(move || {
        let held = |pointer: &Pointer, path: &PathBuf| std::fs::metadata(path).is_ok_and(|m| m.len() == pointer.size);
        Ok(wanted.into_iter().filter(|(pointer, path)| !held(pointer, path)).map(|(pointer, _)| pointer).collect())
    })
    .await?;
    let present = total - missing.len() as u64;
    Ok((missing, present))
}

/// Pointers whose objects the bucket lacks (or holds at another size), and how many it has.
async fn missing_in_bucket<'a>(
    store: &LfsStore,
    pointers: impl Iterator<Item = &'a Pointer>,
) -> Result<(Vec<Pointer>, u64), LfsError> {
    let pointers: Vec<&Pointer> = pointers.collect();
    let stored = if pointers.len() <= HEAD_AT_MOST_OBJECTS {
        sizes_by_head(store, &pointers).await?
    } else {
        sizes_by_listing(store).await?
    };
    let (mut missing, mut present) = (Vec::new(), 0);
    for pointer in pointers {
        match stored.get(&pointer.oid) {
            Some(&size) if size == pointer.size => present += 1,
            _ => missing.push(pointer.clone()),
        }
    }
    Ok((missing, present))
}

/// The size of each of these objects the bucket holds, by id: one HEAD each, all at once.
async fn sizes_by_head(store: &LfsStore, pointers: &[&Pointer]) -> Result<HashMap<String, u64>, LfsError> {
    // Owned ids: a stream over borrowed ones trips the compiler's Send check.
    let oids: Vec<String> = pointers.iter().map(|pointer| pointer.oid.clone()).collect();
    let answers: Vec<Result<Option<(String, u64)>, LfsError>> = futures::stream::iter(oids)
        .map(|oid| async move {
            let found = store.bucket.head(&store.layout.lfs_object(&oid)).await?;
            Ok(found.map(|meta| (oid, meta.size)))
        })
        .buffer_unordered(OBJECTS_IN_FLIGHT)
        .collect()
        .await;
    answers.into_iter().filter_map(Result::transpose).collect()
}

/// The size of every object under `<prefix>/lfs/`, by id, from one listing.
async fn sizes_by_listing(store: &LfsStore) -> Result<HashMap<String, u64>, LfsError> {
    let prefix = store.layout.lfs_prefix();
    let listed = store.bucket.list(&prefix).await?;
    Ok(listed.into_iter().filter_map(|o| Some((o.key.strip_prefix(&prefix)?.to_string(), o.size))).collect())
}

async fn upload(store: &LfsStore, pointer: &Pointer, sent: &AtomicU64) -> Result<(), LfsError> {
    let path = store.object_path(&pointer.oid);
    if !tokio::fs::try_exists(&path).await.unwrap_or(false) {
        return Err(LfsError::NotLocal { oid: pointer.oid.clone() });
    }
    store.send(&pointer.oid, pointer.size, &path, sent).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_lfs_listings_are_read() {
        let oid = "a".repeat(64);
        let json =
            format!(r#"{{"files":[{{"name":"a.bin","size":3,"checkout":true,"oid_type":"sha256","oid":"{oid}"}}]}}"#);
        assert_eq!(parse_ls_files(&json).unwrap(), vec![Pointer { oid, size: 3, path: "a.bin".into() }]);
        assert_eq!(parse_ls_files(r#"{"files":null}"#).unwrap(), vec![]);
        assert!(matches!(
            parse_ls_files(r#"{"files":[{"name":"x","size":1,"oid":"../../x"}]}"#),
            Err(LfsError::BadOid(_))
        ));
        assert!(parse_ls_files("not json").is_err());
    }
}
