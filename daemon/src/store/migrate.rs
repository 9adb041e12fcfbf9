//! `git s3 migrate`: a remote moved from one storage format to the other. The new format is
//! written beside the old one and committed whole (one root write into the native format, which
//! readers prefer; the bundles written before the native root goes, out of it), checked, and only
//! then is the old format removed: our readers see the old repository or the new one, never
//! half of one. A Python reader sees the bundles until they are deleted, one by one; a Python
//! pusher is refused the refs being migrated (their locks are held) and sees a new branch it
//! pushes meanwhile join the new format after the commit.

use super::{
    Format, FormatWatch, Known, ManageError, PushBatch, PushCommand, RemoteRefs, Resources, StoreError, bundles,
    native, open, open_known,
};
use crate::git::GitError;
use crate::progress::Events;
use crate::remote::Remote;

/// What a migration did, or would do.
#[derive(Debug, Clone)]
pub struct Migration {
    pub from: Format,
    pub to: Format,
    pub refs: usize,
    /// One line per step, in the order taken.
    pub steps: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("the remote holds no refs; nothing to migrate (a first push creates the format s3.format names)")]
    Empty,
    #[error("the migration could not write {refname} in the {to} format ({why}); the remote still reads as before")]
    Refused { refname: String, to: Format, why: String },
    #[error(
        "after the migration the {to} format lists other refs than were migrated; the old format is kept, run 'git s3 doctor'"
    )]
    Mismatch { to: Format },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Manage(#[from] ManageError),
}

impl From<GitError> for MigrateError {
    fn from(e: GitError) -> Self {
        StoreError::from(e).into()
    }
}

/// Listings of a shared-layout remote taken while its refs are locked: a push that lands
/// between a listing and the locks is seen by the next one.
const LISTING_ROUNDS: usize = 3;

/// Moves the repository at `remote` into the format `to`.
///
/// Out of the shared layout, every ref's lock (which the Python tool honours) is held from
/// before the listing that is migrated until its bundles are gone: a push of one of those refs
/// is refused meanwhile, never lost. A ref created meanwhile is listed again after the commit
/// and added to the new format (locked, in turn), up to `LISTING_ROUNDS` times.
pub async fn migrate(
    resources: &Resources,
    remote: Remote,
    to: Format,
    dry_run: bool,
) -> Result<Migration, MigrateError> {
    let mut locks = bundles::RefLocks::default();
    let result = migrate_locked(resources, remote, to, dry_run, &mut locks).await;
    locks.release().await;
    result
}

async fn migrate_locked(
    resources: &Resources,
    remote: Remote,
    to: Format,
    dry_run: bool,
    locks: &mut bundles::RefLocks,
) -> Result<Migration, MigrateError> {
    let source = open(resources, remote.clone()).await?;
    let from = source.format();
    let mut listed = source.list(true).await?;
    let mut migration = Migration { from, to, refs: listed.refs.len(), steps: Vec::new() };
    if from == to {
        // A migration cut short after its commit left the old format's objects behind.
        let leftovers = match to {
            Format::Native => {
                let before = remote.bucket.list(&remote.layout.key("refs/")).await.map_err(StoreError::from)?;
                let left = bundles::remove_migrated(&remote.bucket, &remote.layout, &listed.refs)
                    .await
                    .map_err(StoreError::from)?;
                let bundles = before.iter().filter(|o| bundles::is_bundle_key(&remote.layout, &o.key)).count();
                bundles.saturating_sub(left.len())
            }
            Format::Bundles => {
                let left = remote.bucket.list(&remote.layout.key("native/")).await.map_err(StoreError::from)?;
                native::remove_migrated(&remote.bucket, &remote.layout).await.map_err(StoreError::from)?;
                left.len()
            }
        };
        migration.steps.push(match leftovers {
            0 => format!("the remote is in the {to} format already; nothing to do"),
            n => format!("the remote is in the {to} format already; removed {n} object(s) an earlier migration left"),
        });
        return Ok(migration);
    }
    if listed.refs.is_empty() {
        return Err(MigrateError::Empty);
    }
    let protected: Vec<String> =
        source.inventory().await?.refs.into_iter().filter(|r| r.protected).map(|r| r.name).collect();
    if dry_run {
        migration.steps.push(format!(
            "would copy {} ref(s){} from the {from} format into the {to} format, then remove the {from} format",
            listed.refs.len(),
            if protected.is_empty() { String::new() } else { format!(" ({} protected)", protected.len()) }
        ));
        return Ok(migration);
    }
    let lock_ttl = remote.config.lock_ttl;
    if from == Format::Bundles {
        for _ in 0..LISTING_ROUNDS {
            let names: Vec<String> = listed.refs.iter().map(|(name, _)| name.clone()).collect();
            locks.take(&remote.bucket, &remote.layout, lock_ttl, &names).await?;
            let again = source.list(true).await?;
            let settled = same_refs(&again, &listed);
            listed = again;
            if settled {
                break;
            }
        }
        migration.refs = listed.refs.len();
        migration.steps.push(format!("locked {} ref(s) against pushes in the {from} format", listed.refs.len()));
    }
    // What the migration's own readers and writers notice of the prefix's format is moot: every
    // remembered format is forgotten when it ends.
    let watch = FormatWatch { formats: resources.formats.clone(), remote: String::new() };
    let dir = resources.scratch.tempdir("migrate-").map_err(StoreError::TempDir)?;
    let object_format = listed.object_format.map_or("sha1", |f| f.name());
    let git = remote.git.scratch_repository(dir.path(), object_format).await?;
    let scratch = Remote { git: git.clone(), ..remote.clone() };

    // Everything the refs need, read as a clone would.
    let events = Events::unobserved();
    let reader = open_known(resources, scratch.clone(), known(from), watch.clone());
    for keep in reader.fetch(listed.refs.clone(), &events).await? {
        let _ = std::fs::remove_file(keep);
    }
    let updates: String = listed.refs.iter().map(|(name, oid)| format!("update {name} {oid}\n")).collect();
    git.update_refs(&updates).await?;
    if let Some(head) = &listed.head {
        git.run(&["symbolic-ref", "HEAD", head]).await?;
    }
    migration.steps.push(format!("read {} ref(s) from the {from} format", listed.refs.len()));

    // The new format, beside the old one: a native root is one commit of every ref.
    let writer = open_known(resources, scratch, known(to), watch.clone());
    let there = writer.list(false).await?;
    let batch = PushBatch {
        commands: listed
            .refs
            .iter()
            .map(|(name, _)| PushCommand { src: name.clone(), dst: name.clone(), force: true })
            .collect(),
        advertised: there.refs.iter().cloned().collect(),
        atomic: to == Format::Native,
        remote_format: there.object_format,
        ..Default::default()
    };
    for outcome in writer.push(batch, &events).await {
        if let Err(why) = outcome.result {
            return Err(MigrateError::Refused { refname: outcome.dst, to, why: why.to_string() });
        }
    }
    for name in &protected {
        writer.set_protection(name, true).await?;
    }
    // Whatever an earlier attempt cut short chose.
    if let Some(head) = &listed.head {
        writer.set_head(head).await?;
    }
    let written = writer.list(true).await?;
    if !same_refs(&written, &listed) {
        return Err(MigrateError::Mismatch { to });
    }
    migration.steps.push(format!("wrote and checked {} ref(s) in the {to} format", listed.refs.len()));

    // Refs the Python tool (or an older daemon) created in the old format meanwhile join them.
    let mut migrated = listed.refs.clone();
    if from == Format::Bundles {
        for _ in 0..LISTING_ROUNDS {
            let names: Vec<String> =
                source.list(false).await?.refs.into_iter().map(|(name, _)| name).filter(|n| !locks.holds(n)).collect();
            if names.is_empty() {
                break;
            }
            locks.take(&remote.bucket, &remote.layout, lock_ttl, &names).await?;
            let late: Vec<(String, String)> =
                source.list(false).await?.refs.into_iter().filter(|(name, _)| names.contains(name)).collect();
            for keep in reader.fetch(late.clone(), &events).await? {
                let _ = std::fs::remove_file(keep);
            }
            let updates: String = late.iter().map(|(name, oid)| format!("update {name} {oid}\n")).collect();
            git.update_refs(&updates).await?;
            let batch = PushBatch {
                commands: late
                    .iter()
                    .map(|(name, _)| PushCommand { src: name.clone(), dst: name.clone(), force: false })
                    .collect(),
                advertised: writer.list(false).await?.refs.into_iter().collect(),
                remote_format: written.object_format,
                ..Default::default()
            };
            let mut added = 0;
            for (outcome, value) in writer.push(batch, &events).await.into_iter().zip(late) {
                match outcome.result {
                    Ok(_) => {
                        added += 1;
                        migrated.push(value);
                    }
                    // Its bundle stays, and is reported with the others left below.
                    Err(why) => migration.steps.push(format!("{} could not join the {to} format: {why}", outcome.dst)),
                }
            }
            migration.steps.push(format!("added {added} ref(s) pushed in the {from} format during the migration"));
        }
    }

    // Only now does the old format go.
    match from {
        Format::Bundles => {
            let left =
                bundles::remove_migrated(&remote.bucket, &remote.layout, &migrated).await.map_err(StoreError::from)?;
            migration.steps.push("removed the bundles".into());
            if !left.is_empty() {
                migration.steps.push(format!(
                    "{} bundle(s) pushed during the migration remain beside the native format (e.g. {}); push those refs again with git-remote-s3, then 'git s3 doctor'",
                    left.len(),
                    left[0].0
                ));
            }
        }
        Format::Native => {
            native::remove_migrated(&remote.bucket, &remote.layout).await.map_err(StoreError::from)?;
            migration.steps.push("removed the native manifest and packs".into());
        }
    }
    if let Ok(mut formats) = resources.formats.lock() {
        formats.clear();
    }
    Ok(migration)
}

fn known(format: Format) -> Known {
    match format {
        Format::Bundles => Known::Bundles,
        Format::Native => Known::Native { bundles_beside: false },
    }
}

fn same_refs(written: &RemoteRefs, listed: &RemoteRefs) -> bool {
    let mut a = written.refs.clone();
    let mut b = listed.refs.clone();
    a.sort();
    b.sort();
    a == b
}
