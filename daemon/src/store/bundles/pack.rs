//! The bytes of a composed bundle, as pure functions: a bundle header, a pack header with its
//! object count, the old pack's objects, the appended ones and a trailer (SHA-1 or SHA-256); how such an
//! object is cut into multipart parts (uploaded or copied server-side); and the record of how it
//! was built, kept in the object's user metadata for readers that want only the change.

use std::collections::HashMap;
use std::ops::Range;

use crate::object_format::ObjectFormat;

/// `PACK`, version, object count.
pub const PACK_HEADER_BYTES: u64 = 12;
/// S3's smallest part (all parts of an upload but the last).
pub const S3_MIN_PART_BYTES: u64 = 5 * 1024 * 1024;
/// S3's largest part, and the largest range one UploadPartCopy copies.
pub const S3_MAX_PART_BYTES: u64 = 5 * 1024 * 1024 * 1024;
/// S3's limit on the parts of one upload.
const S3_MAX_PARTS: u64 = 10_000;
/// Uploaded parts after the copied ones, when their size is ours to choose.
const TAIL_PART_BYTES: u64 = 16 * 1024 * 1024;
/// User metadata key of the build record. S3 allows 2 KB for all user metadata together.
pub const BUILD_METADATA_KEY: &str = "git-s3-build";
/// What the build record may take of S3's 2 KB (keys count too; leave room for others').
const BUILD_METADATA_BUDGET_BYTES: usize = 1800;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackError {
    #[error("not a git pack (no PACK signature)")]
    Signature,
    #[error("pack version {0} is not one git writes (2 or 3)")]
    Version(u32),
    #[error("the pack is cut short ({0} bytes)")]
    Short(u64),
}

/// The 12 bytes that start a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackHeader {
    pub version: u32,
    pub objects: u32,
}

impl PackHeader {
    pub fn parse(bytes: &[u8]) -> Result<Self, PackError> {
        let Some(header) = bytes.get(..PACK_HEADER_BYTES as usize) else {
            return Err(PackError::Short(bytes.len() as u64));
        };
        if &header[..4] != b"PACK" {
            return Err(PackError::Signature);
        }
        let word = |at: usize| u32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]]);
        let version = word(4);
        if version != 2 && version != 3 {
            return Err(PackError::Version(version));
        }
        Ok(Self { version, objects: word(8) })
    }

    pub fn to_bytes(self) -> [u8; PACK_HEADER_BYTES as usize] {
        let mut out = [0u8; PACK_HEADER_BYTES as usize];
        out[..4].copy_from_slice(b"PACK");
        out[4..8].copy_from_slice(&self.version.to_be_bytes());
        out[8..].copy_from_slice(&self.objects.to_be_bytes());
        out
    }
}

/// The trailer of the pack (or bundle) file at `path`, `len` bytes long: its last bytes.
pub fn read_trailer(path: &std::path::Path, len: u64, format: ObjectFormat) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(len.saturating_sub(format.trailer_bytes())))?;
    let mut trailer = vec![0u8; format.raw_len()];
    file.read_exact(&mut trailer)?;
    Ok(trailer)
}

/// The header `git bundle create <file> <ref>` writes for a self-contained bundle of one ref:
/// version 2 for SHA-1, version 3 naming the format for SHA-256.
pub fn bundle_header(oid: &str, refname: &str) -> Vec<u8> {
    match ObjectFormat::of_hex(oid) {
        Some(ObjectFormat::Sha256) => format!("# v3 git bundle\n@object-format=sha256\n{oid} {refname}\n\n"),
        _ => format!("# v2 git bundle\n{oid} {refname}\n\n"),
    }
    .into_bytes()
}

/// Where the object bytes of a pack of `pack_len` bytes lie (between its header and trailer).
pub fn pack_body(pack_len: u64, format: ObjectFormat) -> Result<Range<u64>, PackError> {
    if pack_len < PACK_HEADER_BYTES + format.trailer_bytes() {
        return Err(PackError::Short(pack_len));
    }
    Ok(PACK_HEADER_BYTES..pack_len - format.trailer_bytes())
}

/// How a composed bundle goes up as a multipart upload. The new object is
/// `new header ‖ pack header ‖ old body ‖ appended objects ‖ trailer`; the old body is the old
/// bundle's object bytes, of which only what cannot be copied server-side is uploaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartPlan {
    /// Old body bytes (offsets in the old body) uploaded in part 1, after the two headers.
    pub first: Range<u64>,
    /// Old bundle object ranges, one copied part each, in order after part 1.
    pub copies: Vec<Range<u64>>,
    /// Old body bytes uploaded first in the tail, before the appended objects and trailer.
    pub tail_body: Range<u64>,
    /// Size of each uploaded tail part but the last.
    pub tail_part_bytes: u64,
    /// Bytes of the pack's trailer.
    pub trailer_bytes: u64,
}

impl PartPlan {
    /// Bytes this plan uploads (the rest is copied inside S3).
    pub fn uploaded_bytes(&self, header_bytes: u64, appended_bytes: u64) -> u64 {
        header_bytes
            + PACK_HEADER_BYTES
            + (self.first.end - self.first.start)
            + (self.tail_body.end - self.tail_body.start)
            + appended_bytes
            + self.trailer_bytes
    }
}

/// The parts of a composed upload, or `None` when the old body is too small to copy any of it
/// (S3 wants every part but the last to be at least 5 MiB). `body_start` is where the old body
/// starts in the old bundle object. With `equal_parts` every part but the last has one size (as
/// Cloudflare R2 demands), at the price of uploading up to one part more of old bytes.
pub fn plan_parts(
    new_header_bytes: u64,
    body_start: u64,
    body_len: u64,
    appended_bytes: u64,
    format: ObjectFormat,
    equal_parts: bool,
) -> Option<PartPlan> {
    let trailer_bytes = format.trailer_bytes();
    let lead = new_header_bytes + PACK_HEADER_BYTES;
    let total = lead + body_len + appended_bytes + trailer_bytes;
    let part = if equal_parts {
        // Round up to whole MiB so the part count stays within S3's limit.
        let mib = 1024 * 1024;
        S3_MIN_PART_BYTES.max(total.div_ceil(S3_MAX_PARTS - 1).div_ceil(mib) * mib)
    } else {
        S3_MIN_PART_BYTES
    };
    if lead >= part {
        return None;
    }
    let first = 0..(part - lead).min(body_len);
    let copyable = body_len - first.end;
    if equal_parts {
        let copies_n = copyable / part;
        if copies_n == 0 {
            return None;
        }
        let copies = (0..copies_n)
            .map(|i| {
                let start = body_start + first.end + i * part;
                start..start + part
            })
            .collect();
        let tail_start = first.end + copies_n * part;
        return Some(PartPlan { first, copies, tail_body: tail_start..body_len, tail_part_bytes: part, trailer_bytes });
    }
    if copyable < S3_MIN_PART_BYTES {
        return None;
    }
    let copies_n = copyable.div_ceil(S3_MAX_PART_BYTES);
    let each = copyable.div_ceil(copies_n);
    let copies = (0..copies_n)
        .map(|i| {
            let start = first.end + i * each;
            let end = (start + each).min(body_len);
            body_start + start..body_start + end
        })
        .collect();
    let tail_part_bytes = TAIL_PART_BYTES.max(appended_bytes.div_ceil(S3_MAX_PARTS - 1 - copies_n));
    Some(PartPlan { first, copies, tail_body: body_len..body_len, tail_part_bytes, trailer_bytes })
}

/// Objects appended to a bundle by one push: they start at `offset` in the bundle object, there
/// are `objects` of them, and what lies before them is the pack of the bundle they were appended
/// to: its tip `base` and its trailer `base_trailer`. A reader that has `base` needs only the
/// bytes from `offset` on; one that also has that pack can rebuild the whole new one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub base: String,
    pub offset: u64,
    pub objects: u32,
    pub base_trailer: String,
}

/// How a bundle object was built, from its user metadata. A bundle without one (the Python
/// tool's, or a fresh one of ours) is a single `git bundle create`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildRecord {
    /// Pushes appended since the bundle was last written fresh (delta chains grow with it).
    pub appended: u32,
    /// Objects in the pack that its tip does not reach (left by force pushes, or by composing
    /// from another ref's bundle), an upper estimate.
    pub garbage: u64,
    /// The latest appended segments, oldest first; older ones are dropped to fit S3's limit.
    pub segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the build record '{0}' is malformed")]
pub struct RecordError(String);

impl BuildRecord {
    /// `v1 appended=3 garbage=0 segments=<base>:<offset>:<objects>:<base trailer>,…`, dropping
    /// the oldest segments until it fits the metadata budget.
    pub fn encode(&self) -> String {
        let mut skip = 0;
        loop {
            let segments: Vec<String> = self.segments[skip..]
                .iter()
                .map(|s| format!("{}:{}:{}:{}", s.base, s.offset, s.objects, s.base_trailer))
                .collect();
            let text =
                format!("v1 appended={} garbage={} segments={}", self.appended, self.garbage, segments.join(","));
            if text.len() <= BUILD_METADATA_BUDGET_BYTES || skip == self.segments.len() {
                return text;
            }
            skip += 1;
        }
    }

    /// The record in an object's user metadata; none there: a bundle built whole.
    pub fn from_metadata(metadata: &HashMap<String, String>) -> Result<Self, RecordError> {
        metadata.get(BUILD_METADATA_KEY).map_or(Ok(Self::default()), |text| Self::decode(text))
    }

    pub fn decode(text: &str) -> Result<Self, RecordError> {
        let bad = || RecordError(text.chars().take(80).collect());
        let mut words = text.split(' ');
        if words.next() != Some("v1") {
            return Err(bad());
        }
        let mut record = BuildRecord::default();
        for word in words {
            let (key, value) = word.split_once('=').ok_or_else(bad)?;
            match key {
                "appended" => record.appended = value.parse().map_err(|_| bad())?,
                "garbage" => record.garbage = value.parse().map_err(|_| bad())?,
                "segments" if value.is_empty() => {}
                "segments" => {
                    for segment in value.split(',') {
                        let mut fields = segment.split(':');
                        let (Some(base), Some(offset), Some(objects), Some(base_trailer), None) =
                            (fields.next(), fields.next(), fields.next(), fields.next(), fields.next())
                        else {
                            return Err(bad());
                        };
                        if !is_hex_id(base) || !is_hex_id(base_trailer) {
                            return Err(bad());
                        }
                        record.segments.push(Segment {
                            base: base.to_string(),
                            offset: offset.parse().map_err(|_| bad())?,
                            objects: objects.parse().map_err(|_| bad())?,
                            base_trailer: base_trailer.to_string(),
                        });
                    }
                }
                // A later version's fields: ignore what we do not know.
                _ => {}
            }
        }
        Ok(record)
    }

    /// The record of a bundle composed from one with this record: its segments move with the
    /// header's length change, and one new segment is added.
    pub fn appended_to(&self, header_shift: i64, added: Segment, garbage: u64) -> Self {
        let mut record = self.shifted(header_shift);
        record.segments.push(added);
        Self { appended: self.appended + 1, garbage: self.garbage + garbage, ..record }
    }

    /// This record for the same pack behind a header `header_shift` bytes longer.
    pub fn shifted(&self, header_shift: i64) -> Self {
        let segments = self
            .segments
            .iter()
            .filter_map(|s| {
                let offset = s.offset.checked_add_signed(header_shift)?;
                Some(Segment { offset, ..s.clone() })
            })
            .collect();
        Self { segments, ..self.clone() }
    }
}

fn is_hex_id(text: &str) -> bool {
    (text.len() == 40 || text.len() == 64) && text.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";
    const MIB: u64 = 1024 * 1024;
    const SHA1: ObjectFormat = ObjectFormat::Sha1;

    #[test]
    fn pack_header_round_trips_and_refuses_garbage() {
        let header = PackHeader { version: 2, objects: 70_000 };
        assert_eq!(PackHeader::parse(&header.to_bytes()), Ok(header));
        assert_eq!(PackHeader::parse(b"PACK\0\0\0\x02\0"), Err(PackError::Short(9)));
        assert_eq!(PackHeader::parse(b"KCAP\0\0\0\x02\0\0\0\x01"), Err(PackError::Signature));
        assert_eq!(PackHeader::parse(b"PACK\0\0\0\x07\0\0\0\x01"), Err(PackError::Version(7)));
    }

    #[test]
    fn bundle_header_is_what_git_writes() {
        assert_eq!(bundle_header(A, "refs/heads/main"), format!("# v2 git bundle\n{A} refs/heads/main\n\n").as_bytes());
        let b = "b".repeat(64);
        let sha256 = format!("# v3 git bundle\n@object-format=sha256\n{b} refs/heads/main\n\n");
        assert_eq!(bundle_header(&b, "refs/heads/main"), sha256.as_bytes());
    }

    #[test]
    fn pack_body_lies_between_header_and_trailer() {
        assert_eq!(pack_body(100, SHA1), Ok(12..80));
        assert_eq!(pack_body(100, ObjectFormat::Sha256), Ok(12..68));
        assert_eq!(pack_body(31, SHA1), Err(PackError::Short(31)));
    }

    fn check_plan(plan: &PartPlan, header: u64, body_start: u64, body_len: u64, appended: u64, equal: bool) {
        // The parts cover the new object exactly once, in order.
        assert_eq!(plan.first.start, 0);
        let mut next = plan.first.end;
        for copy in &plan.copies {
            assert_eq!(copy.start, body_start + next, "copies are contiguous");
            assert!(copy.end - copy.start >= S3_MIN_PART_BYTES);
            assert!(copy.end - copy.start <= S3_MAX_PART_BYTES);
            next = copy.end - body_start;
        }
        assert_eq!(plan.tail_body, next..body_len);
        let first_part = header + PACK_HEADER_BYTES + plan.first.end;
        assert!(first_part >= S3_MIN_PART_BYTES);
        if equal {
            assert_eq!(first_part, plan.tail_part_bytes);
            assert!(plan.copies.iter().all(|c| c.end - c.start == plan.tail_part_bytes));
            assert!(plan.tail_body.end - plan.tail_body.start < plan.tail_part_bytes);
        }
        let tail = (plan.tail_body.end - plan.tail_body.start) + appended + plan.trailer_bytes;
        let parts = 1 + plan.copies.len() as u64 + tail.div_ceil(plan.tail_part_bytes);
        assert!(parts <= S3_MAX_PARTS, "{parts} parts");
    }

    #[test]
    fn a_large_body_is_copied_and_only_the_first_part_and_the_change_go_up() {
        let plan = plan_parts(60, 61, 200 * MIB, 3000, SHA1, false).unwrap();
        check_plan(&plan, 60, 61, 200 * MIB, 3000, false);
        assert_eq!(plan.copies.len(), 1);
        assert_eq!(plan.uploaded_bytes(60, 3000), S3_MIN_PART_BYTES + 3000 + 20);
    }

    #[test]
    fn copies_are_split_at_s3s_largest_part() {
        let body = 12 * 1024 * MIB;
        let plan = plan_parts(60, 61, body, 10 * MIB, SHA1, false).unwrap();
        check_plan(&plan, 60, 61, body, 10 * MIB, false);
        assert_eq!(plan.copies.len(), 3);
    }

    #[test]
    fn equal_parts_upload_the_remainder_with_the_change() {
        let plan = plan_parts(60, 61, 23 * MIB + 5, 3000, SHA1, true).unwrap();
        check_plan(&plan, 60, 61, 23 * MIB + 5, 3000, true);
        assert_eq!(plan.copies.len(), 3);
        let huge = 100 * 1024 * MIB;
        let plan = plan_parts(60, 61, huge, 700 * MIB, SHA1, true).unwrap();
        check_plan(&plan, 60, 61, huge, 700 * MIB, true);
    }

    #[test]
    fn a_small_body_is_not_composed() {
        assert_eq!(plan_parts(60, 61, 9 * MIB, 10, SHA1, false), None);
        assert_eq!(plan_parts(60, 61, 9 * MIB, 10, SHA1, true), None);
        assert!(plan_parts(60, 61, 11 * MIB, 10, SHA1, false).is_some());
    }

    #[test]
    fn build_record_round_trips_and_keeps_the_latest_segments() {
        let record = BuildRecord {
            appended: 2,
            garbage: 7,
            segments: vec![
                Segment { base: A.into(), offset: 1000, objects: 3, base_trailer: B.into() },
                Segment { base: B.into(), offset: 2000, objects: 4, base_trailer: A.into() },
            ],
        };
        assert_eq!(BuildRecord::decode(&record.encode()), Ok(record.clone()));
        let added = Segment { base: B.into(), offset: 5000, objects: 1, base_trailer: A.into() };
        let shifted = record.appended_to(-10, added, 5);
        assert_eq!(shifted.appended, 3);
        assert_eq!(shifted.garbage, 12);
        assert_eq!(shifted.segments.iter().map(|s| s.offset).collect::<Vec<_>>(), vec![990, 1990, 5000]);

        let many = BuildRecord {
            appended: 100,
            garbage: 0,
            segments: (0..100)
                .map(|i| Segment { base: A.into(), offset: i * 1_000_000, objects: 9, base_trailer: B.into() })
                .collect(),
        };
        let text = many.encode();
        assert!(text.len() <= BUILD_METADATA_BUDGET_BYTES);
        let decoded = BuildRecord::decode(&text).unwrap();
        assert_eq!(decoded.segments.last(), many.segments.last(), "the newest segment is kept");
        assert!(decoded.segments.len() > 15);
    }

    #[test]
    fn malformed_records_are_refused() {
        assert!(BuildRecord::decode("v2 appended=1").is_err());
        assert!(BuildRecord::decode("v1 appended=x").is_err());
        assert!(BuildRecord::decode("v1 segments=zz:1:2:zz").is_err());
        assert!(BuildRecord::decode(&format!("v1 segments={A}:1:2")).is_err());
        assert_eq!(
            BuildRecord::decode("v1 appended=1 future=yes"),
            Ok(BuildRecord { appended: 1, ..Default::default() })
        );
    }
}
