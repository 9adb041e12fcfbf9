//! Fetch: streams a ref's bundle from S3 straight into `git index-pack`, never holding it whole.

use std::path::{Path, PathBuf};

use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::header::{self, BundleHeader};
use super::keys::BundleKeys;
use super::pack::BuildRecord;
use super::tail::{CacheFill, NoTail};
use super::{BundleError, BundleRepo, Head};
use crate::git::{GitError, last_line};
use crate::object_format::ObjectFormat;
use crate::progress::Events;
use crate::quarantine::Quarantine;
use crate::store::download::{ResumingBody, feed_rest, in_tasks, index_pack, keep_file};
use crate::store::{StoreError, check_object_format};

/// Bundles downloaded at once by one fetch.
const BUNDLES_IN_FLIGHT: usize = 4;
/// Bundles looked at (HEAD) at once by one fetch.
const LOOKS_IN_FLIGHT: usize = 16;

/// A wanted ref's bundle as S3 holds it now: its size, version and build record.
pub(super) struct RemoteBundle {
    pub refname: String,
    pub oid: String,
    pub key: String,
    pub size: u64,
    pub etag: Option<String>,
    pub record: BuildRecord,
}

impl BundleRepo {
    /// Brings the objects of `wanted` into the caller's repository. Returns the `.keep` files that
    /// protect the new packs until git has updated its refs.
    pub(super) async fn fetch_wanted(
        &self,
        wanted: Vec<(String, String)>,
        events: &Events,
    ) -> Result<Vec<PathBuf>, StoreError> {
        let objects = self.git.git_path("objects").await?;
        // Dropped on any failure, with everything this fetch wrote and nothing else.
        let quarantine =
            Quarantine::new(&objects).map_err(|source| StoreError::Quarantine { what: "create", source })?;
        let inside = BundleRepo { git: quarantine.git(&self.git), ..self.clone() };
        let (mut keeps, mut fills) = (Vec::new(), Vec::new());
        inside.fetch_into(wanted, &quarantine.pack_dir(), events, &mut keeps, &mut fills).await?;
        let keeps = quarantine
            .migrate(&keeps)
            .map_err(|source| StoreError::Quarantine { what: "move the packs out of", source })?;
        for fill in fills {
            self.fill_cache(fill).await;
        }
        Ok(keeps)
    }

    async fn fetch_into(
        &self,
        wanted: Vec<(String, String)>,
        pack_dir: &Path,
        events: &Events,
        keeps: &mut Vec<PathBuf>,
        fills: &mut Vec<CacheFill>,
    ) -> Result<(), StoreError> {
        let oids: Vec<&str> = wanted.iter().map(|(_, oid)| oid.as_str()).collect();
        if let Some(remote) = oids.iter().find_map(|oid| ObjectFormat::of_hex(oid)) {
            check_object_format(&self.git, Some(remote)).await?;
        }
        let present = self.git.present(&oids).await?;
        let mut bundles: Vec<RemoteBundle> =
            futures::stream::iter(wanted.into_iter().filter(|(_, oid)| !present.contains(oid)))
                .map(|(refname, oid)| async move { self.look_at(refname, oid).await })
                .buffer_unordered(LOOKS_IN_FLIGHT)
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<Result<_, _>>()?;
        // In waves (`next_wave`): the trunk whole, then what needs only its segments, and so on.
        // git may want one ref under two names (HEAD and the branch it names).
        bundles.sort_by(|a, b| a.key.cmp(&b.key));
        bundles.dedup_by(|a, b| a.key == b.key);
        bundles.sort_by_key(|b| std::cmp::Reverse(b.size));
        let mut first = true;
        while !bundles.is_empty() {
            let wave = self.next_wave(&mut bundles, first).await?;
            first = false;
            let (wave_keeps, wave_fills) = self.fetch_wave(wave, pack_dir, events).await?;
            keeps.extend(wave_keeps);
            fills.extend(wave_fills);
        }
        Ok(())
    }

    /// Fetches the bundles of one wave, `BUNDLES_IN_FLIGHT` at once, each in a task of its own
    /// (`in_tasks`: polled among others, a 200 MB bundle cost the daemon twice the CPU).
    async fn fetch_wave(
        &self,
        wave: Vec<RemoteBundle>,
        pack_dir: &Path,
        events: &Events,
    ) -> Result<(Vec<PathBuf>, Vec<CacheFill>), StoreError> {
        let fetched = in_tasks(wave, BUNDLES_IN_FLIGHT, |bundle| {
            let (repo, pack_dir, events) = (self.clone(), pack_dir.to_path_buf(), events.clone());
            async move { repo.fetch_ref(&bundle, &pack_dir, &events).await }
        })
        .await?;
        let (keeps, fills): (Vec<_>, Vec<_>) = fetched.into_iter().unzip();
        Ok((keeps.into_iter().flatten().collect(), fills.into_iter().flatten().collect()))
    }

    /// Takes from `left` (largest first) the bundles to fetch next: those whose change alone the
    /// repository can take (a recorded segment starts at a commit it now has); else one alone,
    /// first or while others wait for its history: the trunk, else the largest; else the
    /// branches, then the tags (of which a tag object may be all that is needed, once what it
    /// tags is here).
    async fn next_wave(&self, left: &mut Vec<RemoteBundle>, first: bool) -> Result<Vec<RemoteBundle>, StoreError> {
        let bases: Vec<&str> = left.iter().flat_map(|b| b.record.segments.iter().map(|s| s.base.as_str())).collect();
        let present = self.git.present(&bases).await?;
        let ready = |b: &RemoteBundle| b.record.segments.iter().any(|s| present.contains(&s.base));
        let (wave, waiting): (Vec<_>, Vec<_>) = std::mem::take(left).into_iter().partition(|b| ready(b));
        *left = waiting;
        if !wave.is_empty() {
            return Ok(wave);
        }
        if first || left.iter().skip(1).any(|b| !b.record.segments.is_empty()) {
            // The trunk (what HEAD names) is what the other refs' segments build on.
            let trunk = match self.read_head().await {
                Ok(Head::Ref(head)) => left.iter().position(|b| b.refname == head),
                _ => None,
            };
            return Ok(vec![left.remove(trunk.unwrap_or(0))]);
        }
        let (tags, others): (Vec<_>, Vec<_>) =
            std::mem::take(left).into_iter().partition(|b| b.refname.starts_with("refs/tags/"));
        if others.is_empty() {
            return Ok(tags);
        }
        *left = tags;
        Ok(others)
    }

    /// What S3 holds for a wanted ref: one HEAD request.
    async fn look_at(&self, refname: String, oid: String) -> Result<RemoteBundle, StoreError> {
        let key = self.layout.bundle(&refname, &oid);
        let meta = self
            .bucket
            .head(&key)
            .await?
            .ok_or_else(|| BundleError::Missing { refname: refname.clone(), key: key.clone() })?;
        let record = BuildRecord::from_metadata(&meta.metadata).unwrap_or_else(|e| {
            tracing::debug!(%key, error = %e, "ignoring the bundle's build record");
            BuildRecord::default()
        });
        Ok(RemoteBundle { refname, oid, key, size: meta.size, etag: meta.etag, record })
    }

    async fn fetch_ref(
        &self,
        bundle: &RemoteBundle,
        pack_dir: &Path,
        events: &Events,
    ) -> Result<(Option<PathBuf>, Option<CacheFill>), StoreError> {
        let (refname, oid) = (&bundle.refname, &bundle.oid);
        if self.git.has_object(oid).await? {
            tracing::debug!(%refname, "an earlier bundle of this fetch brought it");
            return Ok((None, None));
        }
        let fetched = match self.fetch_tail(bundle, pack_dir, events).await {
            Ok(fetched) => fetched,
            Err(NoTail(why)) => match self.fetch_tag_object(bundle, pack_dir, events).await? {
                Some(keep) => (keep, None),
                None => {
                    tracing::debug!(%refname, %why, "fetching the whole bundle");
                    (self.unbundle(refname, oid, pack_dir, events).await?, None)
                }
            },
        };
        if !self.git.has_object(oid).await? {
            return Err(StoreError::NotFetched { refname: refname.clone(), oid: oid.clone() });
        }
        Ok(fetched)
    }

    /// Streams one bundle from S3 into `git index-pack`, never holding it whole.
    pub(super) async fn unbundle(
        &self,
        refname: &str,
        oid: &str,
        pack_dir: &Path,
        events: &Events,
    ) -> Result<Option<PathBuf>, StoreError> {
        let key = self.layout.bundle(refname, oid);
        let corrupt =
            |why: String| StoreError::from(BundleError::Corrupt { refname: refname.into(), key: key.clone(), why });
        let download = |why: String| StoreError::Download { key: key.clone(), why };
        let body = self
            .bucket
            .get_from(&key, 0, None)
            .await?
            .ok_or_else(|| BundleError::Missing { refname: refname.into(), key: key.clone() })?;
        let size = body.len;
        let mut body = ResumingBody::new(&self.bucket, &key, body);
        let meter = events.meter(format!("Receiving {refname}"), size);

        let mut buf = Vec::new();
        let (header, header_len) = loop {
            match header::parse_header(&buf) {
                Ok(Some(parsed)) => break parsed,
                Ok(None) => {}
                Err(e) => return Err(corrupt(e.to_string())),
            }
            match body.next().await {
                Ok(Some(chunk)) => {
                    meter.add(chunk.len() as u64);
                    buf.extend_from_slice(&chunk);
                }
                Err(e) => return Err(download(e)),
                Ok(None) => return Err(corrupt("it ends inside its header".into())),
            }
        };
        self.check_header(&header, oid).await.map_err(corrupt)?;

        let (child, mut stdin) = index_pack(&self.git, refname, !header.prerequisites.is_empty())?;
        let feed = async {
            stdin.write_all(&buf[header_len..]).await?;
            feed_rest(&mut body, stdin, &meter).await
        };
        let (fed, output) = tokio::join!(feed, child.wait_with_output());
        let output = output.map_err(GitError::Spawn)?;
        if !output.status.success() {
            return Err(corrupt(format!("git index-pack: {}", last_line(&output.stderr))));
        }
        if let Err(e) = fed {
            return Err(download(e.to_string()));
        }
        meter.finish();
        Ok(keep_file(&output.stdout, pack_dir).0)
    }

    async fn check_header(&self, header: &BundleHeader, oid: &str) -> Result<(), String> {
        if let Some(why) = header.mismatch(oid) {
            return Err(why);
        }
        for prerequisite in &header.prerequisites {
            if !self.git.has_object(prerequisite).await.map_err(|e| e.to_string())? {
                return Err(format!("it needs {prerequisite}, which this repository lacks"));
            }
        }
        Ok(())
    }
}
