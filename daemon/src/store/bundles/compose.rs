//! Composed pushes: a ref's new bundle is built inside S3 from an old bundle's bytes, so a push
//! costs the change, not the history. Part 1 (uploaded) holds the new bundle header, the pack
//! header with the new object count and the first old bytes; the middle parts are copied from
//! the old bundle object server-side; the last part holds the objects the old pack lacks and the
//! new trailer (SHA-1 or SHA-256, as the repository's objects), hashed over a local copy of the old pack (the daemon's pack cache, the
//! caller's own copy from a clone or fetch, or one download). Whatever cannot be composed is
//! written whole by the caller, and this says why.

use std::cmp::Reverse;
use std::collections::{HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::CompletedPart;
use tempfile::TempPath;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::task::JoinSet;

use super::BundleRepo;
use super::header::{self, HEADER_PROBE_BYTES};
use super::keys::BundleKeys;
use super::listing::BundleObject;
use super::pack::{
    self, BUILD_METADATA_KEY, BuildRecord, PACK_HEADER_BYTES, PackHeader, PartPlan, Segment, read_trailer,
};
use super::pack_cache::{Appended, CachedPack, PackCache, oids_of};
use super::push::Prepared;
use crate::bucket::S3Error;
use crate::config::ComposeMode;
use crate::git::{Git, GitError};
use crate::object_format::{ObjectFormat, Oid};
use crate::progress::Events;
use crate::transfer::{MultipartUpload, TransferError, join_part};

/// Below this, a whole bundle costs little more than the ~5 MiB floor of a composed one.
pub const COMPOSE_MIN_BUNDLE_BYTES: u64 = 16 * 1024 * 1024;
/// Pushes appended before a bundle is written whole again: each may deepen delta chains by one,
/// and git keeps its own chains within 50 (`pack.depth`).
pub const MAX_APPENDED_PUSHES: u32 = 50;
/// Objects the tip cannot reach (left by force pushes, or another ref's history) above this
/// share of the pack mean a whole bundle: clones would download too much of no use.
pub const MAX_GARBAGE_PERCENT: u64 = 25;
/// Refs tried as the base of a new ref, largest bundles first.
const BASE_CANDIDATES: usize = 16;
/// What is read of an old bundle to find its header and pack header.
/// Parts of one composed upload in flight at once.
const PARTS_IN_FLIGHT: usize = 4;
/// Bytes read at a time while hashing.
const HASH_CHUNK_BYTES: usize = 1024 * 1024;

/// What composing keeps across pushes: the pack cache, and the stores found to lack
/// UploadPartCopy (asked once per daemon life).
pub struct Composer {
    pub packs: PackCache,
    without_part_copy: Mutex<HashSet<String>>,
    /// One copy or download of a pack at a time per trailer: the refs of one push that all build
    /// on the same bundle wait for the first to bring it.
    bringing: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Composer {
    pub fn new(packs: PackCache) -> Self {
        Self { packs, without_part_copy: Mutex::default(), bringing: Mutex::default() }
    }

    pub(super) fn bringing(&self, trailer: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut bringing = self.bringing.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        bringing.retain(|_, lock| Arc::strong_count(lock) > 1);
        bringing.entry(trailer.to_string()).or_default().clone()
    }

    fn lacks_part_copy(&self, store: &str) -> bool {
        self.without_part_copy.lock().map(|s| s.contains(store)).unwrap_or(false)
    }

    fn mark_without_part_copy(&self, store: &str) {
        if let Ok(mut stores) = self.without_part_copy.lock() {
            stores.insert(store.to_string());
        }
    }
}

/// What became of a composed push.
pub(super) enum Composed {
    Uploaded,
    /// Not composed, for this reason: write a whole bundle.
    WholeBundle(String),
}

pub(super) enum Failure {
    /// Composing does not pay or cannot be done: write a whole bundle instead.
    Skip(String),
    /// The store refused UploadPartCopy as not implemented: whole bundles from now on.
    NoPartCopy,
    /// The push must stop (its lock is lost).
    Refused(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Skip(why) | Failure::Refused(why) => f.write_str(why),
            Failure::NoPartCopy => f.write_str("this S3 store does not implement UploadPartCopy"),
        }
    }
}

fn skip(why: impl std::fmt::Display) -> Failure {
    Failure::Skip(why.to_string())
}

impl From<GitError> for Failure {
    fn from(e: GitError) -> Self {
        skip(e)
    }
}

impl From<S3Error> for Failure {
    fn from(e: S3Error) -> Self {
        skip(e)
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        skip(format!("local file: {e}"))
    }
}

/// The old bundle a new one is composed from, as S3 holds it.
struct Base {
    refname: String,
    key: String,
    tip: String,
    size: u64,
    etag: String,
    header_len: u64,
    format: ObjectFormat,
    pack: PackHeader,
    trailer: String,
    record: BuildRecord,
}

impl Base {
    fn pack_len(&self) -> u64 {
        self.size - self.header_len
    }
}

/// Objects the base lacks, as `git pack-objects` wrote them.
pub(super) struct NewObjects {
    pub(super) file: TempPath,
    pub(super) pack_len: u64,
    pub(super) objects: u32,
    pub(super) oids: Vec<Oid>,
}

impl BundleRepo {
    /// Uploads the new bundle of `prepared` composed from an old one, or says why not.
    pub(super) async fn compose(
        &self,
        prepared: &Prepared,
        new_oid: &str,
        events: &Events,
    ) -> Result<Composed, String> {
        match self.try_compose(prepared, new_oid, events).await {
            Ok(()) => Ok(Composed::Uploaded),
            Err(Failure::Refused(why)) => Err(why),
            Err(other) => Ok(Composed::WholeBundle(other.to_string())),
        }
    }

    /// Where UploadPartCopy support is remembered: the endpoint and bucket.
    fn store_id(&self) -> String {
        format!("{}/{}", self.config.s3.endpoint.as_deref().unwrap_or("aws"), self.config.url.bucket)
    }

    async fn try_compose(&self, prepared: &Prepared, new_oid: &str, events: &Events) -> Result<(), Failure> {
        let dst = &prepared.command.dst;
        if self.config.compose == ComposeMode::Off {
            return Err(skip("s3.compose is off"));
        }
        let store = self.store_id();
        if self.composer.lacks_part_copy(&store) {
            return Err(Failure::NoPartCopy);
        }
        let (refname, bundle) = self.choose_base(prepared, new_oid).await?;
        let base = self.inspect_base(refname, &bundle).await?;
        if ObjectFormat::of_hex(new_oid) != Some(base.format) {
            return Err(skip(format!("{} holds {} objects, {new_oid} is not one", base.key, base.format)));
        }
        if base.record.appended >= MAX_APPENDED_PUSHES {
            return Err(skip(format!(
                "{} pushes were appended to {} since it was last written whole",
                base.record.appended, base.key
            )));
        }
        let garbage = if self.git.is_ancestor(&base.tip, new_oid).await? {
            0
        } else {
            self.count_unreachable(&base.tip, new_oid).await?
        };
        let garbage_total = base.record.garbage + garbage;
        if garbage_total * 100 > u64::from(base.pack.objects) * MAX_GARBAGE_PERCENT {
            return Err(skip(format!(
                "{garbage_total} of the {} objects in {} are unreachable from {new_oid}",
                base.pack.objects, base.key
            )));
        }
        let local = self.local_pack(&base, events).await?;
        if local.objects != base.pack.objects {
            return Err(skip(format!(
                "the cached pack {} counts {} objects, S3's {}",
                base.trailer, local.objects, base.pack.objects
            )));
        }
        let new_objects = self.new_objects(&base.tip, new_oid, &local).await?;

        let bundle_header = pack::bundle_header(new_oid, dst);
        let header_len = bundle_header.len() as u64;
        let objects = base
            .pack
            .objects
            .checked_add(new_objects.objects)
            .ok_or_else(|| skip("more objects than a pack can count"))?;
        let pack_header = PackHeader { version: base.pack.version, objects };
        let old_body = pack::pack_body(base.pack_len(), base.format).map_err(skip)?;
        let new_body = pack::pack_body(new_objects.pack_len, base.format).map_err(skip)?;
        let body_len = old_body.end - old_body.start;
        let appended_len = new_body.end - new_body.start;
        let equal_parts = self.config.compose == ComposeMode::EqualParts;
        let body_start = base.header_len + old_body.start;
        let plan = pack::plan_parts(header_len, body_start, body_len, appended_len, base.format, equal_parts)
            .ok_or_else(|| skip("the old bundle is too small to copy parts of"))?;

        let segment = Segment {
            base: base.tip.clone(),
            offset: header_len + PACK_HEADER_BYTES + body_len,
            objects: new_objects.objects,
            base_trailer: base.trailer.clone(),
        };
        let record = base.record.appended_to(header_len as i64 - base.header_len as i64, segment, garbage);
        let mut pieces = vec![Piece::Bytes(bundle_header), Piece::Bytes(pack_header.to_bytes().to_vec())];
        pieces.extend(
            local.chain.iter().map(|link| Piece::File { path: link.objects.clone(), range: link.range.clone() }),
        );
        let new_body_range = new_body.clone();
        pieces.push(Piece::File { path: new_objects.file.to_path_buf(), range: new_body });
        let object = Assembly { pieces };
        let uploaded = plan.uploaded_bytes(header_len, appended_len);
        let meter = events.meter(format!("Sending {dst}"), uploaded);
        let key = self.layout.bundle(dst, new_oid);
        let trailer =
            match self.upload_composed(&key, &base, &plan, object, &record, prepared, events, meter.counter()).await {
                Ok(trailer) => trailer,
                Err(Failure::NoPartCopy) => {
                    self.composer.mark_without_part_copy(&store);
                    return Err(Failure::NoPartCopy);
                }
                Err(other) => return Err(other),
            };
        meter.finish();
        tracing::info!(
            refname = %dst, base = %base.key, uploaded, copied = body_len - (plan.first.end - plan.first.start)
                - (plan.tail_body.end - plan.tail_body.start),
            appended_objects = new_objects.objects, appended_pushes = record.appended,
            "composed the new bundle from the old one"
        );
        self.remember_pack(local, &new_objects, new_body_range, &trailer).await;
        Ok(())
    }

    /// The bundle the new one is built from: the ref's own, or for a new ref the largest bundle
    /// of a ref it descends from, else the remote HEAD's if they share history.
    async fn choose_base(&self, prepared: &Prepared, new_oid: &str) -> Result<(String, BundleObject), Failure> {
        let dst = &prepared.command.dst;
        let usable = |b: &BundleObject| b.size >= COMPOSE_MIN_BUNDLE_BYTES;
        if let Some(current) = prepared.state.current() {
            if !usable(current) {
                return Err(skip(format!("the old bundle is small ({} bytes)", current.size)));
            }
            if !self.git.has_object(&current.oid).await? {
                return Err(skip(format!("this repository does not have the remote's {dst} ({})", current.oid)));
            }
            return Ok((dst.clone(), current.clone()));
        }
        let listing = self.listing(true).await.map_err(skip)?;
        let mut candidates: Vec<(&String, &BundleObject)> = listing
            .refs
            .iter()
            .filter_map(|(name, state)| Some((name, state.current()?)))
            .filter(|(_, b)| usable(b))
            .collect();
        candidates.sort_by_key(|(_, b)| Reverse(b.size));
        for (name, bundle) in candidates.into_iter().take(BASE_CANDIDATES) {
            if self.git.has_object(&bundle.oid).await? && self.git.is_ancestor(&bundle.oid, new_oid).await? {
                return Ok((name.clone(), bundle.clone()));
            }
        }
        if let Some(head) = &listing.head
            && let Some(bundle) = listing.refs.get(head).and_then(|s| s.current()).filter(|b| usable(b))
            && self.git.has_object(&bundle.oid).await?
            && self.git.succeeds(&["merge-base", &bundle.oid, new_oid]).await?
        {
            return Ok((head.clone(), bundle.clone()));
        }
        Err(skip("no bundle on the remote holds much of its history"))
    }

    /// Reads what composing needs to know of an old bundle: its version (ETag), header, pack
    /// header, trailer and build record.
    async fn inspect_base(&self, refname: String, bundle: &BundleObject) -> Result<Base, Failure> {
        let key = bundle.key.clone();
        let format = ObjectFormat::of_hex(&bundle.oid).ok_or_else(|| skip(format!("{key} names no object")))?;
        let meta = self.bucket.head(&key).await?.ok_or_else(|| skip(format!("{key} is gone")))?;
        let etag = meta.etag.clone().ok_or_else(|| skip(format!("{key} has no ETag")))?;
        let record = BuildRecord::from_metadata(&meta.metadata).map_err(skip)?;
        let size = meta.size;
        if size < HEADER_PROBE_BYTES {
            return Err(skip(format!("{key} is small")));
        }
        let (head, tail) = tokio::try_join!(
            self.bucket.get_range(&key, 0..HEADER_PROBE_BYTES, Some(&etag)),
            self.bucket.get_range(&key, size - format.trailer_bytes()..size, Some(&etag)),
        )?;
        let (Some(head), Some(tail)) = (head, tail) else {
            return Err(skip(format!("{key} is gone")));
        };
        let (parsed, header_len) = header::parse_header(&head)
            .map_err(skip)?
            .ok_or_else(|| skip(format!("the header of {key} is longer than {HEADER_PROBE_BYTES} bytes")))?;
        if !parsed.prerequisites.is_empty() {
            return Err(skip(format!("{key} is not self-contained")));
        }
        if let Some(why) = parsed.mismatch(&bundle.oid) {
            return Err(skip(format!("{key}: {why}")));
        }
        let pack = PackHeader::parse(&head[header_len..]).map_err(skip)?;
        if pack.version != 2 {
            return Err(skip(format!("{key} holds a version {} pack", pack.version)));
        }
        Ok(Base {
            refname,
            key,
            tip: bundle.oid.clone(),
            size,
            etag,
            header_len: header_len as u64,
            format,
            pack,
            trailer: hex::encode(&tail),
            record,
        })
    }

    /// Objects the old tip reaches and the new one does not: an upper bound of what a forced
    /// push leaves unreachable in the pack.
    async fn count_unreachable(&self, old_tip: &str, new_oid: &str) -> Result<u64, Failure> {
        let out = self.git.run_bytes(&["rev-list", "--objects", old_tip, &format!("^{new_oid}")]).await?;
        Ok(listed_objects(&out).count() as u64)
    }

    /// A local copy of the old bundle's pack, byte for byte: from the daemon's cache, the caller's
    /// repository (a clone or fetch by us keeps it as `pack-<trailer>.pack`), or downloaded once.
    async fn local_pack(&self, base: &Base, events: &Events) -> Result<CachedPack, Failure> {
        let packs = &self.composer.packs;
        if let Some(hit) = packs.get(&base.trailer, base.pack_len()) {
            tracing::debug!(pack = %base.trailer, "the old pack is in the daemon's pack cache");
            return Ok(hit);
        }
        let bringing = self.composer.bringing(&base.trailer);
        let _one_at_a_time = bringing.lock().await;
        if let Some(hit) = packs.get(&base.trailer, base.pack_len()) {
            tracing::debug!(pack = %base.trailer, "another push brought the old pack into the cache");
            return Ok(hit);
        }
        if let Some(theirs) = pack_from_repository(&self.git, &self.composer, &base.trailer, base.pack_len()).await? {
            return Ok(theirs);
        }
        tracing::info!(key = %base.key, "no local copy of the old pack; downloading it once");
        self.download_pack(base, events).await
    }

    /// Downloads the old bundle's pack into the cache, checks it against its trailer and indexes it.
    async fn download_pack(&self, base: &Base, events: &Events) -> Result<CachedPack, Failure> {
        let path = self.composer.packs.temp_path("download")?;
        let oids = self.download_pack_to(base, &path, events).await?;
        let composer = self.composer.clone();
        let trailer = base.trailer.clone();
        Ok(tokio::task::spawn_blocking(move || composer.packs.insert_pack(&trailer, &path, 0, &oids, false))
            .await
            .map_err(skip)??)
    }

    async fn download_pack_to(&self, base: &Base, path: &Path, events: &Events) -> Result<Vec<Oid>, Failure> {
        let mut body = self
            .bucket
            .get_from(&base.key, base.header_len, Some(&base.etag))
            .await?
            .ok_or_else(|| skip(format!("{} is gone", base.key)))?;
        let meter = events.side_meter(format!("Receiving {} (to compose from)", base.refname), base.pack_len());
        let mut file = tokio::fs::File::create(path).await?;
        while let Some(chunk) = body.next_chunk().await.map_err(|e| skip(format!("downloading {}: {e}", base.key)))? {
            meter.add(chunk.len() as u64);
            file.write_all(&chunk).await?;
        }
        file.flush().await?;
        drop(file);
        meter.finish();
        let (check, format) = (path.to_path_buf(), base.format);
        let trailer = tokio::task::spawn_blocking(move || {
            let len = std::fs::metadata(&check)?.len();
            let body = pack::pack_body(len, format).map_err(std::io::Error::other)?;
            hash_file_range(&check, 0..body.end, format)
        })
        .await
        .map_err(skip)??;
        if hex::encode(trailer) != base.trailer {
            return Err(skip(format!("the downloaded pack of {} does not match its trailer", base.key)));
        }
        let index = path.with_extension("idx");
        let (path_str, index_str) = (path.to_string_lossy(), index.to_string_lossy());
        let indexed = self.git.run(&["index-pack", "--no-rev-index", "-o", &index_str, &path_str]).await;
        let oids = match indexed {
            Ok(_) => index_oids(&self.git, &index).await,
            Err(e) => Err(e.into()),
        };
        let _ = tokio::fs::remove_file(&index).await;
        oids
    }

    /// Packs what `new_oid` needs beyond `base_tip`, leaving out every object the old pack
    /// already holds (git before 2.50 refuses a pack where a delta base appears twice, and a
    /// revert or a force push brings back objects deep in the old pack). Deltas may refer to the
    /// base tip's objects (a thin pack): they are earlier in the same pack.
    async fn new_objects(&self, base_tip: &str, new_oid: &str, local: &CachedPack) -> Result<NewObjects, Failure> {
        let (chain, format) = (local.chain.clone(), local.format()?);
        let in_base = tokio::task::spawn_blocking(move || oids_of(&chain, format)).await.map_err(skip)??;
        self.objects_beyond(base_tip, new_oid, &in_base).await
    }

    /// Packs what `new_oid` needs beyond `base_tip`, leaving out the objects of `in_base` (what
    /// the pack it is appended to holds); deltas may refer to `base_tip`'s objects.
    pub(super) async fn objects_beyond(
        &self,
        base_tip: &str,
        new_oid: &str,
        in_base: &HashSet<Oid>,
    ) -> Result<NewObjects, Failure> {
        let listed = self.git.run_bytes(&["rev-list", "--objects", new_oid, &format!("^{base_tip}")]).await?;
        let mut revs = format!("{new_oid}\n^{base_tip}\n").into_bytes();
        let mut oids = Vec::new();
        for oid in listed_objects(&listed) {
            let oid = oid.ok_or_else(|| skip("git rev-list: unexpected output"))?;
            if in_base.contains(&oid) {
                revs.extend_from_slice(format!("^{}\n", oid.to_hex()).as_bytes());
            } else {
                oids.push(oid);
            }
        }
        let file = self.composer.packs.temp_path("appended")?;
        let mut new_objects = NewObjects { file, pack_len: 0, objects: 0, oids };
        let args = ["pack-objects", "--revs", "--stdout", "--thin", "--delta-base-offset", "-q"];
        self.git.run_with_input_to_file(&args, &revs, &new_objects.file).await?;
        let mut head = [0u8; PACK_HEADER_BYTES as usize];
        let mut file = std::fs::File::open(&new_objects.file)?;
        file.read_exact(&mut head)?;
        let pack_len = file.seek(SeekFrom::End(0))?;
        let header = PackHeader::parse(&head).map_err(skip)?;
        if header.objects as usize != new_objects.oids.len() {
            return Err(skip(format!(
                "git pack-objects packed {} objects, {} were asked for",
                header.objects,
                new_objects.oids.len()
            )));
        }
        new_objects.pack_len = pack_len;
        new_objects.objects = header.objects;
        Ok(new_objects)
    }

    /// Runs the multipart upload of the composed object; returns its pack trailer (hex).
    #[allow(clippy::too_many_arguments)]
    async fn upload_composed(
        &self,
        key: &str,
        base: &Base,
        plan: &PartPlan,
        mut object: Assembly,
        record: &BuildRecord,
        prepared: &Prepared,
        events: &Events,
        sent: Arc<AtomicU64>,
    ) -> Result<String, Failure> {
        let metadata = vec![(BUILD_METADATA_KEY.to_string(), record.encode())];
        let upload = MultipartUpload::create(&self.bucket, key, metadata).await?;
        let parts = upload.parts();
        let lead = object.pieces.iter().take(2).map(Piece::len).sum::<u64>();
        let mut in_flight: JoinSet<Result<CompletedPart, S3Error>> = JoinSet::new();
        let mut completed = Vec::new();
        let mut part_number = 1;

        // Part 1 and the copies need no trailer: start them while the trailer is hashed.
        let first = 0..lead + plan.first.end;
        spawn_upload(&mut in_flight, &parts, part_number, object.clone(), first, sent.clone());
        for range in &plan.copies {
            part_number += 1;
            let (parts, source, range, etag) = (parts.clone(), base.key.clone(), range.clone(), base.etag.clone());
            in_flight.spawn(async move { parts.copy(part_number, &source, range, &etag).await });
            if in_flight.len() >= PARTS_IN_FLIGHT {
                completed.push(join_part(&mut in_flight).await.map_err(part_failure)?);
            }
        }
        let hashed = object.clone();
        let (pack_end, format) = (object.len(), base.format);
        let trailer = tokio::task::spawn_blocking(move || hashed.hash(lead - PACK_HEADER_BYTES..pack_end, format))
            .await
            .map_err(skip)??;
        object.pieces.push(Piece::Bytes(trailer.clone()));

        let mut start = lead + plan.tail_body.start;
        let end = object.len();
        while start < end {
            part_number += 1;
            let range = start..(start + plan.tail_part_bytes).min(end);
            start = range.end;
            spawn_upload(&mut in_flight, &parts, part_number, object.clone(), range, sent.clone());
            if in_flight.len() >= PARTS_IN_FLIGHT {
                completed.push(join_part(&mut in_flight).await.map_err(part_failure)?);
            }
        }
        while !in_flight.is_empty() {
            completed.push(join_part(&mut in_flight).await.map_err(part_failure)?);
        }
        if let Err(why) = prepared.pass_point_of_no_return(events) {
            upload.abort().await;
            return Err(Failure::Refused(why));
        }
        // We may make it the ref's value only while we hold the lock.
        if let Err(e) = prepared.lock.confirm().await {
            upload.abort().await;
            return Err(Failure::Refused(e.to_string()));
        }
        upload.complete(completed, end).await?;
        Ok(hex::encode(trailer))
    }

    /// Keeps the new pack in the cache for the next push of this ref, sharing the old one's files.
    async fn remember_pack(&self, base: CachedPack, new_objects: &NewObjects, body: Range<u64>, trailer: &str) {
        let composer = self.composer.clone();
        let (file, oids, trailer) = (new_objects.file.to_path_buf(), new_objects.oids.clone(), trailer.to_string());
        let objects = new_objects.objects;
        let result = tokio::task::spawn_blocking(move || {
            composer
                .packs
                .extend(&base, &Appended { file: &file, range: body, objects, oids: &oids, trailer: &trailer })
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not keep the new pack in the pack cache");
        }
    }
}

impl BundleRepo {
    /// Where a whole bundle being uploaded is copied to for the pack cache, when composing is on.
    pub(super) fn whole_bundle_copy(&self) -> Option<(TempPath, std::fs::File)> {
        if self.config.compose == ComposeMode::Off {
            return None;
        }
        let path = self.composer.packs.temp_path("bundle").ok()?;
        let file = std::fs::File::create(&path).ok()?;
        Some((path, file))
    }

    /// Takes the pack of a whole bundle just uploaded (copied to `path` on its way) into the
    /// cache, so the next push of the ref composes without downloading it. `listed`: what
    /// `git rev-list --objects <tip>` printed (the objects the bundle holds).
    pub(super) async fn remember_whole_bundle(&self, path: TempPath, tip: &str, listed: Result<Vec<u8>, GitError>) {
        // `git bundle create` packs exactly what the tip reaches.
        let oids = listed.map_err(|e| e.to_string()).and_then(|listed| {
            listed_objects(&listed)
                .collect::<Option<Vec<Oid>>>()
                .ok_or_else(|| "git rev-list: unexpected output".into())
        });
        if let Err(why) = async { self.remember_bundle_pack(&path, tip, oids?).await }.await {
            tracing::debug!(%why, "the whole bundle's pack is not cached");
        }
    }

    /// Takes the pack of the bundle at `path`, which holds exactly `oids`, into the cache.
    pub(super) async fn remember_bundle_pack(&self, path: &Path, tip: &str, oids: Vec<Oid>) -> Result<(), String> {
        let len = tokio::fs::metadata(path).await.map_err(|e| e.to_string())?.len();
        if len < COMPOSE_MIN_BUNDLE_BYTES {
            return Err("it is too small to compose from".into());
        }
        let mut head = vec![0u8; HEADER_PROBE_BYTES as usize];
        let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
        file.read_exact(&mut head).map_err(|e| e.to_string())?;
        let (_, header_len) =
            header::parse_header(&head).map_err(|e| e.to_string())?.ok_or("its header is too long")?;
        let pack = PackHeader::parse(&head[header_len..]).map_err(|e| e.to_string())?;
        let format = ObjectFormat::of_hex(tip).ok_or("the tip is no object id")?;
        let trailer = read_trailer(path, len, format).map_err(|e| e.to_string())?;
        if oids.len() != pack.objects as usize {
            return Err(format!("the pack counts {} objects, the tip reaches {}", pack.objects, oids.len()));
        }
        let composer = self.composer.clone();
        let (path, trailer) = (path.to_path_buf(), hex::encode(trailer));
        tokio::task::spawn_blocking(move || {
            composer.packs.insert_pack(&trailer, &path, header_len as u64, &oids, false)
        })
        .await
        .map_err(|e| e.to_string())?
        .map(drop)
        .map_err(|e| e.to_string())
    }
}

/// A whole bundle on its way up, copied to a file as it is read, so the pack cache gets its pack
/// without reading the bundle again. The copy is dropped at its first write error.
pub(super) struct Teed<R> {
    inner: R,
    copy: Option<std::fs::File>,
}

impl<R> Teed<R> {
    pub(super) fn new(inner: R, copy: Option<std::fs::File>) -> Self {
        Self { inner, copy }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Teed<R> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &poll
            && let Some(copy) = &mut self.copy
            // A write of what was just read lands in the page cache: brief enough to do here.
            && copy.write_all(&buf.filled()[before..]).is_err()
        {
            self.copy = None;
        }
        poll
    }
}

/// The object ids `git rev-list --objects` printed (`<id>[ <path>]` a line); `None` for a line
/// that does not start with one.
pub(super) fn listed_objects(stdout: &[u8]) -> impl Iterator<Item = Option<Oid>> + '_ {
    stdout.split(|&b| b == b'\n').filter(|line| !line.is_empty()).map(|line| {
        let id = line.split(|&b| b == b' ').next()?;
        std::str::from_utf8(id).ok().and_then(Oid::from_hex)
    })
}

fn part_failure(e: TransferError) -> Failure {
    match e {
        TransferError::S3(S3Error::NotImplemented { op: "UploadPartCopy" }) => Failure::NoPartCopy,
        other => skip(other),
    }
}

/// The caller's own copy of a pack, taken into the cache: a clone or fetch by us keeps a
/// bundle's pack byte for byte as `pack-<trailer>.pack`.
pub(super) async fn pack_from_repository(
    git: &Git,
    composer: &Arc<Composer>,
    trailer: &str,
    pack_len: u64,
) -> Result<Option<CachedPack>, Failure> {
    let Some(theirs) = repository_pack(git, trailer, pack_len).await? else {
        return Ok(None);
    };
    tracing::debug!(pack = %theirs.display(), "copying the old pack from this repository into the pack cache");
    let oids = index_oids(git, &theirs.with_extension("idx")).await?;
    let composer = composer.clone();
    let trailer = trailer.to_string();
    let cached = tokio::task::spawn_blocking(move || composer.packs.insert_pack(&trailer, &theirs, 0, &oids, true))
        .await
        .map_err(skip)??;
    Ok(Some(cached))
}

/// `pack-<trailer>.pack` of the caller's repository (or of a fetch's quarantine, or an
/// alternate), when it is there whole and indexed.
pub(super) async fn repository_pack(git: &Git, trailer: &str, pack_len: u64) -> Result<Option<PathBuf>, Failure> {
    for dir in git.pack_dirs().await? {
        let pack = dir.join(format!("pack-{trailer}.pack"));
        let len = tokio::fs::metadata(&pack).await.map(|m| m.len()).ok();
        if len == Some(pack_len) && pack.with_extension("idx").is_file() {
            return Ok(Some(pack));
        }
    }
    Ok(None)
}

/// The object ids a pack index lists.
async fn index_oids(git: &Git, index: &Path) -> Result<Vec<Oid>, Failure> {
    git.index_object_ids(index)
        .await?
        .iter()
        .map(|oid| Oid::from_hex(oid).ok_or_else(|| skip("git show-index: unexpected output")))
        .collect()
}

fn spawn_upload(
    in_flight: &mut JoinSet<Result<CompletedPart, S3Error>>,
    parts: &crate::transfer::PartUploader,
    part_number: i32,
    object: Assembly,
    range: Range<u64>,
    sent: Arc<AtomicU64>,
) {
    let parts = parts.clone();
    in_flight.spawn(async move {
        let len = range.end - range.start;
        let admission = parts.admit(len).await;
        let bytes = tokio::task::spawn_blocking(move || object.read(range))
            .await
            .map_err(|e| S3Error::Other { op: "UploadPart", key: String::new(), detail: e.to_string() })?
            .map_err(|e| S3Error::Other { op: "UploadPart", key: String::new(), detail: format!("reading: {e}") })?;
        let part = parts.upload(part_number, ByteStream::from(bytes), admission).await?;
        sent.fetch_add(len, Ordering::Relaxed);
        Ok(part)
    });
}

/// A piece of the object being composed.
#[derive(Clone)]
pub(super) enum Piece {
    Bytes(Vec<u8>),
    File { path: PathBuf, range: Range<u64> },
}

impl Piece {
    fn len(&self) -> u64 {
        match self {
            Piece::Bytes(bytes) => bytes.len() as u64,
            Piece::File { range, .. } => range.end - range.start,
        }
    }
}

/// The composed object as a sequence of pieces, read by range without ever being whole.
#[derive(Clone)]
pub(super) struct Assembly {
    pub(super) pieces: Vec<Piece>,
}

impl Assembly {
    pub(super) fn len(&self) -> u64 {
        self.pieces.iter().map(Piece::len).sum()
    }

    /// Calls `each` with the bytes of `range`, in order, a chunk at a time.
    fn visit(&self, range: Range<u64>, mut each: impl FnMut(&[u8])) -> std::io::Result<()> {
        let mut at = 0u64;
        for piece in &self.pieces {
            let piece_range = at..at + piece.len();
            at = piece_range.end;
            let start = range.start.max(piece_range.start);
            let end = range.end.min(piece_range.end);
            if start >= end {
                continue;
            }
            let (from, to) = (start - piece_range.start, end - piece_range.start);
            match piece {
                Piece::Bytes(bytes) => each(&bytes[from as usize..to as usize]),
                Piece::File { path, range: file_range } => {
                    let mut file = std::fs::File::open(path)?;
                    file.seek(SeekFrom::Start(file_range.start + from))?;
                    let mut left = to - from;
                    let mut buf = vec![0u8; HASH_CHUNK_BYTES.min(left as usize)];
                    while left > 0 {
                        let n = buf.len().min(left as usize);
                        file.read_exact(&mut buf[..n])?;
                        each(&buf[..n]);
                        left -= n as u64;
                    }
                }
            }
        }
        Ok(())
    }

    fn read(&self, range: Range<u64>) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity((range.end - range.start) as usize);
        self.visit(range, |bytes| out.extend_from_slice(bytes))?;
        Ok(out)
    }

    /// The hash of `range` that a pack in `format` ends with.
    pub(super) fn hash(&self, range: Range<u64>, format: ObjectFormat) -> std::io::Result<Vec<u8>> {
        let mut hasher = format.hasher();
        self.visit(range, |bytes| hasher.update(bytes))?;
        Ok(hasher.finalize())
    }
}

pub(super) fn hash_file_range(path: &Path, range: Range<u64>, format: ObjectFormat) -> std::io::Result<Vec<u8>> {
    Assembly { pieces: vec![Piece::File { path: path.to_path_buf(), range }] }.hash(0..u64::MAX, format)
}
