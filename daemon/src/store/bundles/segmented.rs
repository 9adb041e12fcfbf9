//! Whole bundles built the way composed ones are: the pack of a base commit's history, then the
//! ref's own objects as a segment that the object's build record names. The bundle holds what
//! `git bundle create` would put in it (the Python tool reads it like any other), and a reader
//! that has the base downloads only the segment (see `tail`).
//!
//! The base's pack is fresh from `git pack-objects`, or, within one push, the bytes of a bundle
//! the push has just written whose tip the base descends from (or is a little behind): then only
//! what leads from that tip to the base is packed, as one more segment. A mirror push of hundreds
//! of refs so packs each history about once, not once per ref.
//!
//! The base is the nearest commit the ref shares with the refs it may build on, chosen so that a
//! reader can always follow: the trunk (the remote's HEAD branch, or the branch a first push
//! makes HEAD) builds only on its own previous value, every other branch on the trunk, a tag on
//! any branch. A clone fetches the trunk whole, then every other ref's segment; a fetch of a ref
//! pushed again downloads what its previous value lacks.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tempfile::TempPath;

use super::BundleRepo;
use super::compose::{COMPOSE_MIN_BUNDLE_BYTES, MAX_APPENDED_PUSHES, hash_file_range, listed_objects};
use super::keys::BundleKeys;
use super::pack::{self, BUILD_METADATA_KEY, BuildRecord, PACK_HEADER_BYTES, PackHeader, Segment, read_trailer};
use super::push::Prepared;
use crate::git::GitError;
use crate::object_format::{ObjectFormat, Oid};
use crate::progress::Events;
use crate::store::{PushBatch, choose_head};
use crate::transfer::{TransferError, upload_file_with};

/// Bundles of a push kept on disk for later refs of the push to build on.
const BUILT_KEPT: usize = 16;
/// Of those, how many are asked whether their tip is an ancestor or a descendant of a new base.
const BUILT_ANCESTRY_CHECKS: usize = 4;
/// A bundle whose tip descends from a new ref's base may start the ref's bundle when the objects
/// beyond the base are at most this share of it: what the Python tool downloads for the ref and
/// what the bucket stores stay within 1.05× of its own push.
const MAX_EXTRA_PERCENT: u64 = 5;

/// A commit of a ref the remote holds (`pushed`: false), or will hold once the batch is pushed.
struct Tip {
    refname: String,
    commit: String,
    pushed: bool,
}

/// What the new bundles of one push may build on: the commits of refs, and the bundles the push
/// has built so far.
#[derive(Default)]
pub(super) struct BundleBases {
    tips: Vec<Tip>,
    trunk: Option<String>,
    /// Committer time of each pushed ref's commit: older refs are built first.
    dates: HashMap<String, i64>,
    built: Mutex<VecDeque<Arc<BuiltBundle>>>,
}

impl BundleBases {
    /// The commits `dst` may build on.
    fn for_ref<'a>(&'a self, dst: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        let is_tag = dst.starts_with("refs/tags/");
        let trunk = self.trunk.as_deref();
        self.tips
            .iter()
            .filter(move |t| {
                let own_previous = t.refname == dst && !t.pushed;
                let allowed = if self.is_trunk(dst) {
                    false
                } else if is_tag {
                    t.refname.starts_with("refs/heads/")
                } else {
                    Some(t.refname.as_str()) == trunk
                };
                own_previous || (allowed && t.refname != dst)
            })
            .map(|t| t.commit.as_str())
    }

    /// Where `dst` comes in the order refs are built: the trunk, the other branches, then the
    /// tags, older ones first (later ones build on the bundles they leave).
    pub(super) fn build_order(&self, dst: &str) -> (bool, bool, i64) {
        (!self.is_trunk(dst), dst.starts_with("refs/tags/"), self.dates.get(dst).copied().unwrap_or(0))
    }

    pub(super) fn is_trunk(&self, dst: &str) -> bool {
        self.trunk.as_deref() == Some(dst)
    }

    fn keep(&self, built: BuiltBundle) {
        if let Ok(mut kept) = self.built.lock() {
            kept.push_back(Arc::new(built));
            while kept.len() > BUILT_KEPT {
                kept.pop_front();
            }
        }
    }
}

/// Why a bundle is written without a segment (by `git bundle create`).
pub(super) struct NoBase(pub String);

impl<E: std::fmt::Display> From<E> for NoBase {
    fn from(e: E) -> Self {
        NoBase(e.to_string())
    }
}

/// A bundle put together in a file, ready to upload.
struct Building {
    path: TempPath,
    len: u64,
    header_len: u64,
    objects: u32,
    record: BuildRecord,
    oids: Vec<Oid>,
    /// The commit its ref's value is or tags.
    tip: String,
    /// Its ref's value is a tag object.
    tagged: bool,
}

impl Building {
    fn tipped(self, tip: String, new_oid: &str) -> Self {
        let tagged = tip != new_oid;
        Self { tip, tagged, ..self }
    }
}

/// A bundle this push wrote, which later refs of the push may build on: its pack's bytes are
/// theirs up to its end, so only what they add is packed.
struct BuiltBundle {
    tip: String,
    tagged: bool,
    path: TempPath,
    header_len: u64,
    /// Its pack's object bytes.
    body: Range<u64>,
    objects: u32,
    /// Its pack's trailer (hex).
    trailer: String,
    oids: HashSet<Oid>,
    record: BuildRecord,
}

impl BundleRepo {
    /// The commits of the refs the remote holds and of the refs `batch` pushes, as far as this
    /// repository has them, and the trunk.
    pub(super) async fn bundle_bases(&self, batch: &PushBatch) -> BundleBases {
        let mut named: Vec<(String, String, bool)> = Vec::new();
        let mut trunk = None;
        match self.listing(true).await {
            Ok(listing) => {
                trunk = listing.head.clone();
                named.extend(
                    listing
                        .refs
                        .iter()
                        .filter_map(|(name, state)| Some((name.clone(), state.current()?.oid.clone(), false))),
                );
            }
            Err(e) => tracing::debug!(error = %e, "no remote refs to base new bundles on"),
        }
        named.extend(batch.commands.iter().filter(|c| !c.src.is_empty()).map(|c| (c.dst.clone(), c.src.clone(), true)));
        if trunk.is_none() {
            let branches: Vec<&str> =
                named.iter().map(|(name, _, _)| name.as_str()).filter(|n| n.starts_with("refs/heads/")).collect();
            let current = self.git.run(&["symbolic-ref", "-q", "HEAD"]).await.ok();
            trunk = choose_head(&branches, current.as_deref()).map(str::to_string);
        }
        let revs: Vec<String> = named.iter().map(|(_, rev, _)| format!("{rev}^{{commit}}")).collect();
        let revs: Vec<&str> = revs.iter().map(String::as_str).collect();
        let peeled = match self.git.resolve_all(&revs).await {
            Ok(peeled) => peeled,
            Err(e) => {
                tracing::debug!(error = %e, "cannot peel the remote's refs to commits");
                return BundleBases::default();
            }
        };
        let tips: Vec<Tip> = named
            .into_iter()
            .zip(peeled)
            .filter_map(|((refname, _, pushed), commit)| Some(Tip { refname, commit: commit?, pushed }))
            .collect();
        let dates = self.commit_dates(&tips).await;
        BundleBases { tips, trunk, dates, built: Mutex::default() }
    }

    /// The committer time of each pushed tip's commit.
    async fn commit_dates(&self, tips: &[Tip]) -> HashMap<String, i64> {
        let mut commits: Vec<&str> = tips.iter().filter(|t| t.pushed).map(|t| t.commit.as_str()).collect();
        commits.sort_unstable();
        commits.dedup();
        let mut args = vec!["log", "--no-walk=unsorted", "--format=%H %ct"];
        args.extend(commits);
        let printed = match self.git.run(&args).await {
            Ok(printed) => printed,
            Err(e) => {
                tracing::debug!(error = %e, "cannot date the pushed commits");
                return HashMap::new();
            }
        };
        let when: HashMap<&str, i64> = printed
            .lines()
            .filter_map(|line| {
                let (commit, time) = line.split_once(' ')?;
                Some((commit, time.parse().ok()?))
            })
            .collect();
        tips.iter()
            .filter(|t| t.pushed)
            .filter_map(|t| Some((t.refname.clone(), *when.get(t.commit.as_str())?)))
            .collect()
    }

    /// Uploads the bundle of `prepared`'s new value as its base's pack and segments, or says
    /// why it cannot be (no shared history: `git bundle create` writes it then).
    pub(super) async fn upload_segmented(
        &self,
        prepared: &Prepared,
        new_oid: &str,
        bases: &BundleBases,
        events: &Events,
    ) -> Result<Result<(), NoBase>, String> {
        let dst = &prepared.command.dst;
        let building = match self.build_segmented(dst, new_oid, bases).await {
            Ok(building) => building,
            Err(no_base) => return Ok(Err(no_base)),
        };
        let meter = events.meter(format!("Sending {dst}"), building.len);
        let counter = meter.counter();
        let key = self.layout.bundle(dst, new_oid);
        let metadata = vec![(BUILD_METADATA_KEY.to_string(), building.record.encode())];
        let sent = AtomicU64::new(0);
        let uploaded =
            upload_file_with(&self.bucket, &key, &building.path, building.len, &sent, metadata, async || {
                prepared.pass_point_of_no_return(events)?;
                prepared.lock.confirm().await.map_err(|e| e.to_string())
            })
            .await;
        counter.fetch_add(sent.load(Ordering::Relaxed), Ordering::Relaxed);
        match uploaded {
            Ok(()) => meter.finish(),
            Err(TransferError::Refused(why)) => return Err(why),
            Err(e) => return Err(e.to_string()),
        }
        if let Some(last) = building.record.segments.last() {
            tracing::info!(
                refname = %dst, base = %last.base, bytes = building.len, segment_objects = last.objects,
                segments = building.record.segments.len(), "wrote the bundle as its base and segments"
            );
        }
        if building.len >= COMPOSE_MIN_BUNDLE_BYTES {
            // Later pushes compose from it through the pack cache.
            if let Err(why) = self.remember_bundle_pack(&building.path, new_oid, building.oids).await {
                tracing::debug!(%why, "the bundle's pack is not cached");
            }
        } else if let Some(format) = ObjectFormat::of_hex(new_oid)
            && let Err(e) = self.keep_built(building, bases, format).await
        {
            tracing::debug!(error = %e, "later refs of this push will not build on this bundle");
        }
        Ok(Ok(()))
    }

    async fn keep_built(&self, building: Building, bases: &BundleBases, format: ObjectFormat) -> std::io::Result<()> {
        let trailer = read_trailer(&building.path, building.len, format)?;
        let body = building.header_len + PACK_HEADER_BYTES..building.len - format.trailer_bytes();
        bases.keep(BuiltBundle {
            tip: building.tip,
            tagged: building.tagged,
            path: building.path,
            header_len: building.header_len,
            body,
            objects: building.objects,
            trailer: hex::encode(trailer),
            oids: building.oids.into_iter().collect(),
            record: building.record,
        });
        Ok(())
    }

    /// The commit `new_oid` is or tags, and the nearest commit it shares with what it may build on.
    async fn segment_base(&self, dst: &str, new_oid: &str, bases: &BundleBases) -> Result<(String, String), NoBase> {
        let commit = self
            .git
            .resolve_all(&[&format!("{new_oid}^{{commit}}")])
            .await?
            .pop()
            .flatten()
            .ok_or_else(|| NoBase(format!("{new_oid} is no commit nor a tag of one")))?;
        let mut others: Vec<&str> = bases.for_ref(dst).collect();
        others.sort_unstable();
        others.dedup();
        if others.is_empty() {
            // The trunk of a first push of several refs: its own pack, for the others to build on.
            if bases.is_trunk(dst) && bases.tips.iter().filter(|t| t.pushed).count() > 1 {
                return Ok((commit.clone(), commit));
            }
            return Err(NoBase("it has nothing to build on: the trunk builds only on its previous value".into()));
        }
        let mut args = vec!["merge-base", commit.as_str()];
        args.extend(others);
        match self.git.run(&args).await {
            Ok(out) => match out.lines().next() {
                Some(base) => Ok((commit.clone(), base.to_string())),
                None => Err(NoBase("git merge-base printed nothing".into())),
            },
            Err(GitError::Failed { .. }) => Err(NoBase("it shares no history with the refs it may build on".into())),
            Err(e) => Err(e.into()),
        }
    }

    /// Puts together the bundle of `new_oid` on its base: on the bytes of a bundle this push
    /// built whose tip the base descends from, when there is one, else on a fresh pack of the
    /// base's history.
    async fn build_segmented(&self, dst: &str, new_oid: &str, bases: &BundleBases) -> Result<Building, NoBase> {
        let format = ObjectFormat::of_hex(new_oid).ok_or_else(|| NoBase(format!("{new_oid} is no object id")))?;
        let (tip, base) = self.segment_base(dst, new_oid, bases).await?;
        if let Some((built, extra)) = self.built_base(bases, &base).await {
            match self.build_on(&built, extra, dst, new_oid, &base, format).await {
                Ok(building) => return Ok(building.tipped(tip, new_oid)),
                Err(NoBase(why)) => tracing::debug!(refname = %dst, %why, "not built on the bundle built before"),
            }
        }
        Ok(self.build_fresh(dst, new_oid, &base, format).await?.tipped(tip, new_oid))
    }

    /// A bundle this push built that the new one can start with, and the objects of it the new
    /// tip cannot reach: one whose tip is `base`, else among the latest built one whose tip is
    /// an ancestor of it or a descendant holding few objects more (`MAX_EXTRA_PERCENT`). It must
    /// have room for two more segments.
    async fn built_base(&self, bases: &BundleBases, base: &str) -> Option<(Arc<BuiltBundle>, u64)> {
        let candidates: Vec<Arc<BuiltBundle>> = bases
            .built
            .lock()
            .map(|built| built.iter().filter(|b| b.record.appended + 2 <= MAX_APPENDED_PUSHES).cloned().collect())
            .unwrap_or_default();
        if let Some(same) = candidates.iter().find(|b| b.tip == base) {
            return Some((same.clone(), 0));
        }
        // Refs are built oldest first: the latest built are the nearest.
        for built in candidates.into_iter().rev().take(BUILT_ANCESTRY_CHECKS) {
            if self.git.is_ancestor(&built.tip, base).await.unwrap_or(false) {
                return Some((built, 0));
            }
            if !self.git.is_ancestor(base, &built.tip).await.unwrap_or(false) {
                continue;
            }
            let beyond = format!("^{base}");
            let Ok(extra) = self.git.run(&["rev-list", "--objects", "--count", &built.tip, &beyond]).await else {
                continue;
            };
            let Ok(extra) = extra.trim().parse::<u64>() else { continue };
            if extra * 100 <= u64::from(built.objects) * MAX_EXTRA_PERCENT {
                return Some((built, extra));
            }
        }
        None
    }

    /// The base's pack, fresh from `git pack-objects`, and the ref's own objects after it.
    async fn build_fresh(
        &self,
        dst: &str,
        new_oid: &str,
        base: &str,
        format: ObjectFormat,
    ) -> Result<Building, NoBase> {
        let listed = self.git.run_bytes(&["rev-list", "--objects", base]).await?;
        let mut oids: Vec<Oid> = listed_objects(&listed)
            .collect::<Option<_>>()
            .ok_or_else(|| NoBase("git rev-list: unexpected output".into()))?;
        let in_base: HashSet<Oid> = oids.iter().copied().collect();
        let base_pack = self.composer.packs.temp_path("base")?;
        let (segment, packed) =
            tokio::join!(self.objects_beyond(base, new_oid, &in_base), self.pack_listed(&listed, &base_pack));
        let segment = segment.map_err(|e| NoBase(e.to_string()))?;
        packed?;
        oids.extend(segment.oids.iter().copied());
        let base_len = std::fs::metadata(&base_pack)?.len();
        let base_trailer = read_trailer(&base_pack, base_len, format)?;
        let pieces =
            vec![pack_piece(&base_pack, base_len, format)?, pack_piece(&segment.file, segment.pack_len, format)?];
        let assembled = self.assemble(dst, new_oid, pieces, format).await?;
        let segment = Segment {
            base: base.to_string(),
            offset: assembled.starts[1],
            objects: segment.objects,
            base_trailer: hex::encode(base_trailer),
        };
        let record = BuildRecord { appended: 1, garbage: 0, segments: vec![segment] };
        assembled.into_building(record, oids)
    }

    /// The bytes of `built`'s pack, then what leads from its tip to the base (when the base is
    /// further on), then the ref's own objects. `extra`: objects of `built` the base cannot reach.
    async fn build_on(
        &self,
        built: &BuiltBundle,
        extra: u64,
        dst: &str,
        new_oid: &str,
        base: &str,
        format: ObjectFormat,
    ) -> Result<Building, NoBase> {
        let mut in_built = built.oids.clone();
        let to_base = match built.tip == base || extra > 0 {
            true => None,
            false => Some(self.objects_beyond(&built.tip, base, &built.oids).await.map_err(|e| NoBase(e.to_string()))?),
        };
        in_built.extend(to_base.iter().flat_map(|a| a.oids.iter().copied()));
        let own = self.objects_beyond(base, new_oid, &in_built).await.map_err(|e| NoBase(e.to_string()))?;
        let mut oids: Vec<Oid> = in_built.into_iter().collect();
        oids.extend(own.oids.iter().copied());
        let mut pieces =
            vec![Piece { path: built.path.to_path_buf(), range: built.body.clone(), objects: built.objects }];
        for segment in to_base.iter().chain([&own]) {
            pieces.push(pack_piece(&segment.file, segment.pack_len, format)?);
        }
        let assembled = self.assemble(dst, new_oid, pieces, format).await?;
        let mut record = built.record.shifted(assembled.header_len as i64 - built.header_len as i64);
        if let Some(to_base) = &to_base {
            record.segments.push(Segment {
                base: built.tip.clone(),
                offset: assembled.starts[1],
                objects: to_base.objects,
                base_trailer: built.trailer.clone(),
            });
        }
        let offset = *assembled.starts.last().ok_or_else(|| NoBase("nothing was put together".into()))?;
        record.segments.push(Segment {
            base: base.to_string(),
            offset,
            objects: own.objects,
            base_trailer: built.trailer.clone(),
        });
        // Each segment may deepen a delta chain by one.
        record.appended += 1 + u32::from(to_base.is_some());
        // Besides what lies beyond the base, its tag object, if its tip was a tag.
        record.garbage += extra + u64::from(built.tagged);
        assembled.into_building(record, oids)
    }

    /// Writes `header ‖ pack header ‖ pieces ‖ trailer` to a new file; `objects` of the pieces'
    /// packs are counted from their headers.
    async fn assemble(
        &self,
        dst: &str,
        new_oid: &str,
        pieces: Vec<Piece>,
        format: ObjectFormat,
    ) -> Result<Assembled, NoBase> {
        let path = self.composer.packs.temp_path("segmented")?;
        let header = pack::bundle_header(new_oid, dst);
        let into = path.to_path_buf();
        let (len, objects, starts) =
            tokio::task::spawn_blocking(move || write_bundle(&into, &header, &pieces, format)).await??;
        let header_len = pack::bundle_header(new_oid, dst).len() as u64;
        Ok(Assembled { path, len, header_len, objects, starts })
    }

    /// `git pack-objects` of the objects `git rev-list --objects` listed, written to `path`.
    async fn pack_listed(&self, listed: &[u8], path: &Path) -> Result<(), NoBase> {
        let args = ["pack-objects", "--stdout", "--delta-base-offset", "-q"];
        Ok(self.git.run_with_input_to_file(&args, listed, path).await?)
    }
}

/// A bundle written to a file, before its build record is known.
struct Assembled {
    path: TempPath,
    len: u64,
    header_len: u64,
    objects: u32,
    /// Where each piece starts in the bundle.
    starts: Vec<u64>,
}

impl Assembled {
    fn into_building(self, record: BuildRecord, oids: Vec<Oid>) -> Result<Building, NoBase> {
        if self.objects as usize != oids.len() {
            return Err(NoBase(format!("the pack counts {} objects, {} were listed", self.objects, oids.len())));
        }
        Ok(Building {
            path: self.path,
            len: self.len,
            header_len: self.header_len,
            objects: self.objects,
            record,
            oids,
            tip: String::new(),
            tagged: false,
        })
    }
}

/// Object bytes of a pack, to put together with others: a file, where in it they lie, and how
/// many objects they are.
struct Piece {
    path: PathBuf,
    range: Range<u64>,
    objects: u32,
}

/// The object bytes of the pack at `path` (between its header and trailer).
fn pack_piece(path: &Path, len: u64, format: ObjectFormat) -> Result<Piece, NoBase> {
    let mut head = [0u8; PACK_HEADER_BYTES as usize];
    File::open(path)?.read_exact(&mut head)?;
    let objects = PackHeader::parse(&head)?.objects;
    Ok(Piece { path: path.to_path_buf(), range: pack::pack_body(len, format)?, objects })
}

/// Writes the bundle: `header`, a pack header counting the objects of every piece, the pieces,
/// and a trailer over the pack. Returns the bundle's length, its object count and where each
/// piece starts.
fn write_bundle(
    path: &Path,
    header: &[u8],
    pieces: &[Piece],
    format: ObjectFormat,
) -> std::io::Result<(u64, u32, Vec<u64>)> {
    let invalid = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidData, why);
    let objects = pieces
        .iter()
        .try_fold(0u32, |sum, piece| sum.checked_add(piece.objects))
        .ok_or_else(|| invalid("more objects than a pack can count".into()))?;
    let mut file = File::create(path)?;
    file.write_all(header)?;
    file.write_all(&PackHeader { version: 2, objects }.to_bytes())?;
    let mut starts = Vec::with_capacity(pieces.len());
    let mut at = header.len() as u64 + PACK_HEADER_BYTES;
    for Piece { path: source, range, .. } in pieces {
        starts.push(at);
        let mut source = File::open(source)?;
        source.seek(SeekFrom::Start(range.start))?;
        let len = range.end - range.start;
        if std::io::copy(&mut source.take(len), &mut file)? != len {
            return Err(invalid("a pack ended early".into()));
        }
        at += len;
    }
    file.flush()?;
    let trailer = hash_file_range(path, header.len() as u64..at, format)?;
    file.write_all(&trailer)?;
    Ok((at + trailer.len() as u64, objects, starts))
}
