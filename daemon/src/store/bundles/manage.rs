//! `git s3` verbs on a remote in the shared layout: protection marks, deleting a branch under its
//! lock, and `doctor`'s repairs of what crashed pushes or other tools left behind.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;

use super::keys::{BundleKeys, RefKey};
use super::listing::{BundleObject, Listing, RefState, default_branch};
use super::lock::RefLock;
use super::{BundleRepo, release};
use crate::bucket::{OpenUpload, PutOptions};
use crate::store::{DoctorOptions, Finding, ManageError, StoreError, age_s, branch_ref};

/// Bundles doctor checks at once: header probes are small; thorough checks download.
const CHECKS_IN_FLIGHT: usize = 16;
const THOROUGH_CHECKS_IN_FLIGHT: usize = 2;

impl BundleRepo {
    pub(super) async fn mark_protected(&self, branch: &str, protect: bool) -> Result<(String, bool), ManageError> {
        let refname = branch_ref(branch)?;
        let key = self.layout.protected(&refname);
        let state = self.read_ref(&refname).await?;
        match (protect, state.protected) {
            // A mark on nothing would read as protection the remote does not have.
            (true, false) if state.bundles.is_empty() => return Err(ManageError::NoSuchRef(refname)),
            (true, false) => {
                self.bucket.put_bytes(&key, Vec::new(), PutOptions::default()).await?;
            }
            (false, true) => self.bucket.delete(&key).await?,
            _ => return Ok((refname, false)),
        }
        Ok((refname, true))
    }

    /// Deletes a branch under its push lock; `force` also deletes a protected one (and the
    /// protection). Returns where HEAD moved, if it named the branch.
    pub(super) async fn delete_ref(&self, branch: &str, force: bool) -> Result<(String, Option<String>), ManageError> {
        let refname = branch_ref(branch)?;
        let lock = RefLock::acquire(&self.bucket, &self.layout.lock(&refname), &refname, self.config.lock_ttl).await?;
        let result = self.delete_locked(&refname, force).await;
        release(lock).await;
        result.map(|new_head| (refname, new_head))
    }

    async fn delete_locked(&self, refname: &str, force: bool) -> Result<Option<String>, ManageError> {
        let state = self.read_ref(refname).await?;
        if state.bundles.is_empty() {
            return Err(ManageError::NoSuchRef(refname.to_string()));
        }
        if state.protected && !force {
            return Err(ManageError::Protected(refname.to_string()));
        }
        for bundle in &state.bundles {
            self.bucket.delete(&bundle.key).await?;
        }
        self.bucket.delete(&self.layout.zip(refname)).await?;
        if state.protected {
            self.bucket.delete(&self.layout.protected(refname)).await?;
        }
        Ok(self.repoint_head_after_delete(refname).await?)
    }

    /// Finds what is wrong with the remote and, unless `dry_run`, repairs what the options allow.
    pub(super) async fn diagnose(&self, options: &DoctorOptions) -> Result<Vec<Finding>, StoreError> {
        // Uploads first: one whose ref is unlocked in the listing taken after it is dead.
        let uploads = match self.bucket.open_uploads(&self.layout.root()).await {
            Ok(uploads) => uploads,
            Err(e) => {
                tracing::debug!(error = %e, "cannot list open uploads");
                Vec::new()
            }
        };
        let listing = self.listing(true).await?;
        let ttl = options.lock_ttl.unwrap_or(self.config.lock_ttl);
        let (mut findings, bad) = self.check_bundles(&listing, options.thorough).await;
        for (refname, state) in &listing.refs {
            if state.bundles.len() > 1 {
                findings.extend(self.repair_bundles(refname, state, &bad, options).await?);
            }
            if let Some(lock) = &state.lock {
                let age = age_s(lock.last_modified);
                if age > ttl.as_secs() {
                    let problem = format!("stale lock ({age}s old, TTL {}s)", ttl.as_secs());
                    let (action, fixed) = match (options.delete_stale_locks, options.dry_run) {
                        (false, _) => ("remove it with --delete-stale-locks".to_string(), false),
                        (true, true) => ("would remove the lock".to_string(), false),
                        (true, false) => {
                            self.bucket.delete(&lock.key).await?;
                            ("removed the lock".to_string(), true)
                        }
                    };
                    findings.push(Finding { subject: refname.clone(), problem, action, fixed });
                }
            }
        }
        for name in &listing.unusable {
            findings.push(Finding {
                subject: name.clone(),
                problem: "not a ref name git can use; clones and fetches leave it out".into(),
                action: format!("if no other tool needs them, delete the keys under {}", self.layout.ref_dir(name)),
                fixed: false,
            });
        }
        findings.extend(self.repair_head(&listing, options.dry_run).await?);
        for upload in &uploads {
            findings.extend(self.repair_upload(upload, &listing, ttl, options).await?);
        }
        Ok(findings)
    }

    /// Every bundle a clone would refuse, with how to repair it, and the keys of those bundles.
    async fn check_bundles(&self, listing: &Listing, thorough: bool) -> (Vec<Finding>, HashSet<String>) {
        // Owned items: closures over borrowed ones trip the compiler's Send check.
        let bundles: Vec<(String, BundleObject, String)> = listing
            .refs
            .iter()
            .flat_map(|(refname, state)| {
                state.bundles.iter().map(|b| (refname.clone(), b.clone(), corrupt_bundle_repair(refname, state, b)))
            })
            .collect();
        let in_flight = if thorough { THOROUGH_CHECKS_IN_FLIGHT } else { CHECKS_IN_FLIGHT };
        let checked: Vec<_> = futures::stream::iter(bundles)
            .map(|(refname, bundle, action)| async move {
                let (problem, action) = match self.check_bundle(&refname, &bundle, thorough).await {
                    Ok(None) => return None,
                    Ok(Some(problem)) => (problem, action),
                    // One bundle that cannot be read hides nothing about the others.
                    Err(e) => (format!("could not check the bundle: {e}"), "run doctor again".to_string()),
                };
                let problem = format!("{problem} ({})", short(&bundle.oid));
                Some((Finding { subject: refname, action, problem, fixed: false }, bundle.key))
            })
            .buffer_unordered(in_flight)
            .collect()
            .await;
        let mut bad: Vec<(Finding, String)> = checked.into_iter().flatten().collect();
        bad.sort_by(|a, b| a.0.subject.cmp(&b.0.subject));
        bad.into_iter().unzip()
    }

    /// Aborts an unfinished upload nobody will finish: a bundle upload of a ref no push holds
    /// the lock of (only lock holders upload bundles), or any other upload idle for too long.
    async fn repair_upload(
        &self,
        upload: &OpenUpload,
        listing: &Listing,
        ttl: Duration,
        options: &DoctorOptions,
    ) -> Result<Option<Finding>, StoreError> {
        let (subject, abandoned) = match self.layout.classify(&upload.key) {
            RefKey::Bundle { refname, .. } => {
                let locked = listing
                    .refs
                    .get(&refname)
                    .and_then(|state| state.lock.as_ref())
                    .is_some_and(|lock| age_s(lock.last_modified) <= ttl.as_secs());
                (refname, !locked)
            }
            _ => {
                let idle = age_s(self.bucket.last_activity(upload).await);
                let subject = upload.key.strip_prefix(&self.layout.root()).unwrap_or(&upload.key).to_string();
                (subject, idle >= options.upload_idle.as_secs())
            }
        };
        if !abandoned {
            return Ok(None);
        }
        let problem = format!("unfinished upload started {}s ago", age_s(upload.initiated));
        if options.dry_run {
            return Ok(Some(Finding { subject, problem, action: "would abort it".into(), fixed: false }));
        }
        self.bucket.abort_upload(&upload.key, &upload.upload_id).await?;
        Ok(Some(Finding { subject, problem, action: "aborted it".into(), fixed: true }))
    }

    /// Keeps one bundle (the newest a clone would take, or `--keep`) and moves every other one to a branch of
    /// its own, `<ref>_<sha8>`, or deletes it with `--delete-bundle`. Done under the ref's lock.
    async fn repair_bundles(
        &self,
        refname: &str,
        state: &RefState,
        bad: &HashSet<String>,
        options: &DoctorOptions,
    ) -> Result<Vec<Finding>, StoreError> {
        let newest_healthy =
            state.bundles.iter().filter(|b| !bad.contains(&b.key)).max_by(|a, b| a.last_modified.cmp(&b.last_modified));
        let chosen = (!options.keep.is_empty())
            .then(|| state.bundles.iter().find(|b| b.oid.starts_with(&options.keep)))
            .flatten()
            .or(newest_healthy)
            .or_else(|| state.current());
        let Some(kept) = chosen else { return Ok(Vec::new()) };
        let problem = format!("{} bundles; keeping {}", state.bundles.len(), short(&kept.oid));
        let lock = if options.dry_run {
            None
        } else {
            match RefLock::acquire(&self.bucket, &self.layout.lock(refname), refname, self.config.lock_ttl).await {
                Ok(lock) => Some(lock),
                Err(e) => {
                    return Ok(vec![Finding { subject: refname.into(), problem, action: e.to_string(), fixed: false }]);
                }
            }
        };
        let mut findings = Vec::new();
        for other in state.bundles.iter().filter(|b| b.key != kept.key) {
            let branch = format!("{refname}_{}", short(&other.oid));
            let verb = if options.dry_run { "would " } else { "" };
            let action = if options.delete_bundles {
                format!("{verb}delete bundle {}", short(&other.oid))
            } else {
                format!("{verb}move bundle {} to {branch}", short(&other.oid))
            };
            if !options.dry_run {
                if !options.delete_bundles {
                    self.bucket.copy(&other.key, &self.layout.bundle(&branch, &other.oid)).await?;
                }
                self.bucket.delete(&other.key).await?;
            }
            findings.push(Finding {
                subject: refname.into(),
                problem: problem.clone(),
                action,
                fixed: !options.dry_run,
            });
        }
        if let Some(lock) = lock {
            release(lock).await;
        }
        Ok(findings)
    }

    async fn repair_head(&self, listing: &Listing, dry_run: bool) -> Result<Option<Finding>, StoreError> {
        let head = listing.head.as_deref();
        if head.is_some_and(|h| listing.values().any(|(name, _)| name == h)) {
            return Ok(None);
        }
        let problem = match (&listing.bad_head, head) {
            (Some(why), _) => why.clone(),
            (None, None) => "missing".to_string(),
            (None, Some(h)) => format!("names {h}, which does not exist"),
        };
        let Some(target) = default_branch(listing, "") else {
            if head.is_none() && listing.bad_head.is_none() {
                return Ok(None); // an empty repository needs no HEAD
            }
            let action = "no branch to point it at; push a branch".to_string();
            return Ok(Some(Finding { subject: "HEAD".into(), problem, action, fixed: false }));
        };
        if dry_run {
            return Ok(Some(Finding {
                subject: "HEAD".into(),
                problem,
                action: format!("would point it at {target}"),
                fixed: false,
            }));
        }
        self.bucket.put_bytes(&self.layout.head(), target.as_bytes().to_vec(), PutOptions::default()).await?;
        Ok(Some(Finding { subject: "HEAD".into(), problem, action: format!("pointed it at {target}"), fixed: true }))
    }
}

/// How to get rid of a bad bundle: keep another bundle of the ref where it has one, else push
/// the ref again or delete it.
fn corrupt_bundle_repair(refname: &str, state: &RefState, bad: &BundleObject) -> String {
    match state.bundles.iter().find(|b| b.key != bad.key) {
        Some(other) => format!(
            "keep the other bundle: git s3 doctor --delete-bundle --keep {} (or push {refname} again)",
            short(&other.oid)
        ),
        None => format!(
            "push {refname} again (git push --force <remote> {refname}), or delete it: git s3 delete-branch {refname}"
        ),
    }
}

fn short(oid: &str) -> &str {
    &oid[..oid.len().min(8)]
}
