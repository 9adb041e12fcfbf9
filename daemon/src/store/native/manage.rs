//! `git s3` verbs on a native remote: show it, protect or delete a branch (each one commit of the
//! root), and `doctor`.

use std::collections::HashSet;
use std::sync::Arc;

use super::manifest::RefTable;
use super::{NativeRepo, Snapshot, packs_prefix, shards_prefix};
use crate::bucket::ObjectInfo;
use crate::progress::Events;
use crate::store::bundles::is_bundle_key;
use crate::store::{
    DoctorOptions, Finding, Format, Inventory, ManageError, RefSummary, StoreError, StoredValue, age_s, branch_ref,
    choose_head,
};

/// A pack is uploaded before the commit that names it; the sweep after a push (which may run
/// while another push of the same daemon or another is between the two) leaves a pack no root
/// names for at least this long, whatever the grace period. `git s3 doctor --upload-idle`
/// overrides it, as asked.
const UNNAMED_PACK_MIN_AGE_S: u64 = 600;

impl NativeRepo {
    pub(super) async fn describe(&self) -> Result<Inventory, StoreError> {
        let snapshot = self.snapshot().await?;
        let refs = snapshot
            .refs
            .iter()
            .map(|(name, oid)| RefSummary {
                name: name.clone(),
                values: vec![StoredValue { oid: oid.clone(), size: 0, age_s: 0 }],
                protected: snapshot.root.is_protected(name),
                lock_age_s: None,
            })
            .collect();
        Ok(Inventory { format: Format::Native, refs, head: snapshot.root.head.clone(), warnings: self.warnings() })
    }

    pub(super) async fn mark_protected(&self, branch: &str, protect: bool) -> Result<(String, bool), ManageError> {
        let refname = branch_ref(branch)?;
        let name = &refname;
        let changed = self
            .commit_with(move |snapshot: Arc<Snapshot>| {
                Box::pin(async move {
                    if protect && !snapshot.refs.contains_key(name) {
                        return Err(ManageError::NoSuchRef(name.clone()));
                    }
                    if snapshot.root.is_protected(name) == protect {
                        return Ok((None, false));
                    }
                    let mut next = snapshot.root.successor();
                    if protect {
                        next.protected.push(name.clone());
                        next.protected.sort();
                    } else {
                        next.protected.retain(|p| p != name);
                    }
                    Ok((Some((next, snapshot.refs.clone())), true))
                })
            })
            .await?;
        Ok((refname, changed))
    }

    pub(super) async fn set_grace(&self, seconds: Option<u64>) -> Result<(u64, bool), ManageError> {
        let Some(seconds) = seconds else {
            let (root, _) = self.read_root().await?;
            return Ok((root.grace_s, false));
        };
        self.commit_with(move |snapshot: Arc<Snapshot>| {
            Box::pin(async move {
                if snapshot.etag.is_none() {
                    return Err(ManageError::EmptyRemote);
                }
                if snapshot.root.grace_s == seconds {
                    return Ok((None, (seconds, false)));
                }
                let mut next = snapshot.root.successor();
                next.grace_s = seconds;
                Ok((Some((next, snapshot.refs.clone())), (seconds, true)))
            })
        })
        .await
    }

    pub(super) async fn point_head(&self, refname: &str) -> Result<(), ManageError> {
        self.commit_with(move |snapshot: Arc<Snapshot>| {
            Box::pin(async move {
                if !snapshot.refs.contains_key(refname) {
                    return Err(ManageError::NoSuchRef(refname.to_string()));
                }
                if snapshot.root.head.as_deref() == Some(refname) {
                    return Ok((None, ()));
                }
                let mut next = snapshot.root.successor();
                next.head = Some(refname.to_string());
                Ok((Some((next, snapshot.refs.clone())), ()))
            })
        })
        .await
    }

    pub(super) async fn delete_ref(&self, branch: &str, force: bool) -> Result<(String, Option<String>), ManageError> {
        let refname = branch_ref(branch)?;
        let name = &refname;
        let moved = self
            .commit_with(move |snapshot: Arc<Snapshot>| {
                Box::pin(async move {
                    if !snapshot.refs.contains_key(name) {
                        return Err(ManageError::NoSuchRef(name.clone()));
                    }
                    if snapshot.root.is_protected(name) && !force {
                        return Err(ManageError::Protected(name.clone()));
                    }
                    let mut refs: RefTable = snapshot.refs.clone();
                    refs.remove(name);
                    let mut next = snapshot.root.successor();
                    next.protected.retain(|p| p != name);
                    // What only this branch reached is garbage now.
                    next.rewrites += 1;
                    let mut moved = None;
                    if next.head.as_ref() == Some(name) {
                        let branches: Vec<&str> =
                            refs.keys().map(String::as_str).filter(|n| n.starts_with("refs/heads/")).collect();
                        next.head = choose_head(&branches, None).map(str::to_string);
                        moved = next.head.clone();
                    }
                    Ok((Some((next, refs)), moved))
                })
            })
            .await?;
        self.maintain_in_background();
        Ok((refname, moved))
    }

    /// After a push: the sweep, with the remote's own grace period; a pack no root ever named
    /// stays at least `UNNAMED_PACK_MIN_AGE_S` whatever the grace period.
    pub(super) async fn sweep_after_grace(&self) -> Result<Option<String>, StoreError> {
        let snapshot = self.snapshot().await?;
        let stored = self.bucket.list(&packs_prefix(&self.layout)).await?;
        let grace = snapshot.root.grace_s;
        let swept = self.sweep(&snapshot, &stored, grace, grace.max(UNNAMED_PACK_MIN_AGE_S), false).await?;
        let count = swept.iter().filter(|f| f.fixed).count();
        if count == 0 {
            return Ok(None);
        }
        tracing::info!(objects = count, grace, "swept packs past the grace period");
        Ok(Some(format!("swept {count} objects past the grace period ({grace}s)")))
    }

    /// Deletes the packs the root does not name once they are old enough: retired ones `grace`
    /// seconds after they left the root, any other (a push cut short or outraced, a lost
    /// compaction) `unnamed_grace` seconds after it was written. What it found, and did.
    pub(super) async fn sweep(
        &self,
        snapshot: &Snapshot,
        stored: &[ObjectInfo],
        grace: u64,
        unnamed_grace: u64,
        dry_run: bool,
    ) -> Result<Vec<Finding>, StoreError> {
        let mut findings = Vec::new();
        let named: HashSet<&str> = snapshot.root.packs.iter().map(|p| p.name.as_str()).collect();
        let now = super::compact::now_s();
        let mut swept = HashSet::new();
        for object in stored {
            let Some(file) = object.key.strip_prefix(&packs_prefix(&self.layout)) else { continue };
            let name = file.strip_prefix("pack-").and_then(|f| f.split('.').next()).unwrap_or(file);
            if named.contains(name) {
                continue;
            }
            // A retired pack counts from when it left the root; any other from when it was written.
            let retired = snapshot.root.retired.iter().find(|r| r.name == name);
            let (age, grace) = match retired {
                Some(r) => (now.saturating_sub(r.at), grace),
                None => (age_s(object.last_modified), unnamed_grace),
            };
            let old_enough = age >= grace;
            let problem = match retired {
                Some(_) => format!(
                    "left the manifest {age}s ago (compacted or collected); kept for fetches that started before"
                ),
                None => format!("not named by the manifest ({age}s old): a push that lost its race or was cut short"),
            };
            let (action, fixed) = match (old_enough, dry_run) {
                (false, _) => (format!("left alone for the grace period ({grace}s)"), false),
                (true, true) => ("would delete it".to_string(), false),
                (true, false) => {
                    self.bucket.delete(&object.key).await?;
                    swept.insert(name.to_string());
                    ("deleted it".to_string(), true)
                }
            };
            findings.push(Finding { subject: object.key.clone(), problem, action, fixed });
        }
        if snapshot.root.retired.iter().any(|r| swept.contains(&r.name)) {
            let swept = &swept;
            self.commit_with(move |snapshot: Arc<Snapshot>| {
                Box::pin(async move {
                    let mut next = snapshot.root.successor();
                    next.retired.retain(|r| !swept.contains(&r.name));
                    Ok::<_, StoreError>((Some((next, snapshot.refs.clone())), ()))
                })
            })
            .await?;
        }
        findings.extend(self.sweep_shards(snapshot, unnamed_grace, dry_run).await?);
        Ok(findings)
    }

    /// Every push writes the shards it changed; the ones no root names any more are deleted once
    /// `grace` seconds old (by when they were written: a reader between the root and a shard
    /// the sweep took reads the root again). One finding for all of them; younger ones are how
    /// a remote looks between pushes, and no finding.
    async fn sweep_shards(
        &self,
        snapshot: &Snapshot,
        grace: u64,
        dry_run: bool,
    ) -> Result<Option<Finding>, StoreError> {
        let prefix = shards_prefix(&self.layout);
        let named: HashSet<&str> = snapshot.root.shards.iter().flatten().map(String::as_str).collect();
        let unnamed: Vec<ObjectInfo> = self
            .bucket
            .list(&prefix)
            .await?
            .into_iter()
            .filter(|o| o.key.strip_prefix(&prefix).is_some_and(|name| !named.contains(name)))
            .collect();
        let old: Vec<ObjectInfo> = unnamed.into_iter().filter(|o| age_s(o.last_modified) >= grace).collect();
        if old.is_empty() {
            return Ok(None);
        }
        if !dry_run {
            for object in &old {
                self.bucket.delete(&object.key).await?;
            }
        }
        Ok(Some(Finding {
            subject: prefix,
            problem: format!(
                "{} shard(s) of the ref table that the manifest no longer names, older than {grace}s",
                old.len()
            ),
            action: if dry_run { "would delete them".into() } else { "deleted them".into() },
            fixed: !dry_run,
        }))
    }

    /// `doctor --thorough`: every pack the root names downloaded and indexed (as a clone would),
    /// then every ref's history checked for completeness.
    async fn check_history(&self, snapshot: &Snapshot) -> Result<Vec<Finding>, StoreError> {
        let dir = self.scratch.tempdir("native-check-").map_err(StoreError::TempDir)?;
        let object_format = snapshot.root.object_format.as_deref().unwrap_or("sha1");
        let git = self.git.scratch_repository(dir.path(), object_format).await?;
        let mut findings = Vec::new();
        let pack_dir = dir.path().join("objects/pack");
        for pack in &snapshot.root.packs {
            if let Err(e) = self.download(&git, vec![pack.clone()], &pack_dir, &Events::unobserved()).await {
                findings.push(Finding {
                    subject: super::pack_key(&self.layout, &pack.name, "pack"),
                    problem: format!("cannot be indexed: {e}"),
                    action: "push the refs it held again from a clone that has them".into(),
                    fixed: false,
                });
            }
        }
        let present = git.present(&snapshot.refs.values().map(String::as_str).collect::<Vec<_>>()).await?;
        for (name, oid) in &snapshot.refs {
            if !present.contains(oid) {
                findings.push(Finding {
                    subject: name.clone(),
                    problem: format!("its value {oid} is in no pack"),
                    action: "push it again from a clone that has it".into(),
                    fixed: false,
                });
            }
        }
        let roots: Vec<&str> =
            snapshot.refs.values().map(String::as_str).filter(|oid| present.contains(*oid)).collect();
        if findings.is_empty() && !roots.is_empty() {
            let input: String = roots.iter().map(|oid| format!("{oid}\n")).collect();
            if let Err(e) = git.run_with_input(&["rev-list", "--objects", "--quiet", "--stdin"], input.as_bytes()).await
            {
                findings.push(Finding {
                    subject: "history".into(),
                    problem: format!("objects the refs reach are in no pack ({e})"),
                    action: "push the refs again from a clone that has them".into(),
                    fixed: false,
                });
            }
        }
        Ok(findings)
    }

    /// What is wrong with a native remote: packs the manifest names but the bucket lacks, packs
    /// no manifest names (pushes that lost their race or were cut short; removed once older than
    /// an hour, so that no push in flight loses its pack), bundles of the shared layout beside it.
    pub(super) async fn diagnose(&self, options: &DoctorOptions) -> Result<Vec<Finding>, StoreError> {
        let snapshot = self.snapshot().await?;
        let mut findings = Vec::new();
        let stored = self.bucket.list(&packs_prefix(&self.layout)).await?;
        let stored_keys: HashSet<&str> = stored.iter().map(|o| o.key.as_str()).collect();
        for pack in &snapshot.root.packs {
            for extension in ["pack", "idx", "tips"] {
                let key = super::pack_key(&self.layout, &pack.name, extension);
                if !stored_keys.contains(key.as_str()) {
                    findings.push(Finding {
                        subject: key,
                        problem: "named by the manifest but missing: fetches that need it fail".into(),
                        action: "push the refs it held again from a clone that has them".into(),
                        fixed: false,
                    });
                }
            }
        }
        // Asked for by hand: `--upload-idle` may shorten both.
        let grace = snapshot.root.grace_s.min(options.upload_idle.as_secs());
        findings.extend(self.sweep(&snapshot, &stored, grace, grace, options.dry_run).await?);
        findings.extend(self.abort_idle_uploads(options).await?);
        if options.thorough {
            findings.extend(self.check_history(&snapshot).await?);
        }
        let bundles = self.bucket.list(&self.layout.key("refs/")).await?;
        let count = bundles.iter().filter(|o| is_bundle_key(&self.layout, &o.key)).count();
        if count > 0 {
            findings.push(Finding {
                subject: self.layout.key("refs/"),
                problem: format!(
                    "{count} bundle(s) of the shared layout beside the native manifest; they are not read (the Python tool, or a migration in flight, wrote them)"
                ),
                action: "if nothing needs them, delete them".into(),
                fixed: false,
            });
        }
        Ok(findings)
    }

    /// Uploads of packs that a push began and never finished (its daemon was killed while git
    /// wrote the pack): aborted once idle for `--upload-idle`.
    async fn abort_idle_uploads(&self, options: &DoctorOptions) -> Result<Vec<Finding>, StoreError> {
        let uploads = match self.bucket.open_uploads(&packs_prefix(&self.layout)).await {
            Ok(uploads) => uploads,
            Err(e) => {
                tracing::debug!(error = %e, "cannot list open uploads");
                return Ok(Vec::new());
            }
        };
        let mut findings = Vec::new();
        for upload in &uploads {
            if age_s(self.bucket.last_activity(upload).await) < options.upload_idle.as_secs() {
                continue;
            }
            let problem = format!("unfinished upload started {}s ago", age_s(upload.initiated));
            let (action, fixed) = if options.dry_run {
                ("would abort it", false)
            } else {
                self.bucket.abort_upload(&upload.key, &upload.upload_id).await?;
                ("aborted it", true)
            };
            findings.push(Finding { subject: upload.key.clone(), problem, action: action.into(), fixed });
        }
        Ok(findings)
    }
}
