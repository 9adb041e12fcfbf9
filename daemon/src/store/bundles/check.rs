//! What `git s3 doctor` checks in each bundle: cheaply, everything a clone would refuse at the
//! header; thoroughly, the whole bundle, indexed in a scratch repository like a clone would.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use super::header::{self, HEADER_PROBE_BYTES, MAX_HEADER_BYTES};
use super::listing::BundleObject;
use super::pack::{PACK_HEADER_BYTES, PackHeader};
use super::{BundleError, BundleRepo};
use crate::git::Git;
use crate::object_format::ObjectFormat;
use crate::progress::Events;
use crate::store::StoreError;

impl BundleRepo {
    /// What is wrong with `bundle` (the value of `refname`), or `None` when a clone would take
    /// it. `thorough` downloads and indexes the whole bundle.
    pub async fn check_bundle(
        &self,
        refname: &str,
        bundle: &BundleObject,
        thorough: bool,
    ) -> Result<Option<String>, StoreError> {
        if bundle.size == 0 {
            return Ok(Some("the bundle is empty (0 bytes)".into()));
        }
        let mut probe_len = bundle.size.min(HEADER_PROBE_BYTES);
        let (header, header_len, probe) = loop {
            let Some(probe) = self.bucket.get_range(&bundle.key, 0..probe_len, None).await? else {
                return Ok(None); // gone since the listing: nothing left to repair
            };
            match header::parse_header(&probe) {
                Ok(Some((header, len))) => break (header, len as u64, probe),
                Ok(None) if probe_len < bundle.size.min(MAX_HEADER_BYTES as u64) => {
                    probe_len = bundle.size.min(MAX_HEADER_BYTES as u64);
                }
                Ok(None) if probe_len < bundle.size => {
                    return Ok(Some(format!("the bundle's header is larger than {MAX_HEADER_BYTES} bytes")));
                }
                Ok(None) => return Ok(Some("the bundle ends inside its header".into())),
                Err(e) => return Ok(Some(format!("the bundle is corrupt: {e}"))),
            }
        };
        if let Some(why) = header.mismatch(&bundle.oid) {
            return Ok(Some(format!("the bundle is not what its key says: {why}")));
        }
        if !header.prerequisites.is_empty() {
            return Ok(Some(format!(
                "the bundle is not self-contained: it needs {} object(s) it does not hold",
                header.prerequisites.len()
            )));
        }
        let format = ObjectFormat::of_hex(&bundle.oid).unwrap_or(ObjectFormat::Sha1);
        if bundle.size < header_len + PACK_HEADER_BYTES + format.trailer_bytes() {
            return Ok(Some("the bundle is too short to hold a pack".into()));
        }
        if probe.len() as u64 >= header_len + PACK_HEADER_BYTES
            && let Err(e) = PackHeader::parse(&probe[header_len as usize..])
        {
            return Ok(Some(format!("the bundle holds no pack after its header: {e}")));
        }
        if thorough {
            return self.index_whole(refname, &bundle.oid, format).await;
        }
        Ok(None)
    }

    /// Indexes the whole bundle in an empty scratch repository and walks every object the ref
    /// reaches, as a clone would.
    async fn index_whole(&self, refname: &str, oid: &str, format: ObjectFormat) -> Result<Option<String>, StoreError> {
        let scratch = self.scratch.tempdir("doctor-").map_err(StoreError::TempDir)?;
        let dir = scratch.path().to_string_lossy().to_string();
        let object_format = format!("--object-format={format}");
        self.git.run(&["init", "--quiet", "--bare", "--template=", &object_format, &dir]).await?;
        let git = self.git.for_repository(scratch.path());
        let repo = self.with_git(git.clone());
        // Nobody reads this operation's events: the receiver goes at once, so none can block.
        let (events, _) = Events::channel(Arc::new(AtomicU64::new(0)), false);
        match repo.unbundle(refname, oid, &scratch.path().join("objects/pack"), &events).await {
            Ok(_) => {}
            Err(StoreError::Bundles(BundleError::Corrupt { why, .. })) => {
                return Ok(Some(format!("the bundle is corrupt: {why}")));
            }
            Err(e) => return Err(e),
        }
        if let Err(e) = git.run(&["rev-list", "--objects", "--quiet", oid]).await {
            return Ok(Some(format!("the bundle lacks objects {oid} reaches: {e}")));
        }
        Ok(None)
    }

    /// The same remote, reached on behalf of another repository.
    fn with_git(&self, git: Git) -> BundleRepo {
        BundleRepo {
            bucket: self.bucket.clone(),
            layout: self.layout.clone(),
            config: self.config.clone(),
            git,
            composer: self.composer.clone(),
            scratch: self.scratch.clone(),
            watch: self.watch.clone(),
        }
    }
}
