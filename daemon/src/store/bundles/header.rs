//! Parses the header of a git bundle (v2 and v3), so a bundle can be streamed from S3 straight
//! into `git index-pack` without landing on disk first.

use crate::object_format::ObjectFormat;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BundleHeader {
    pub version: u8,
    /// `@key=value` lines of a v3 bundle, e.g. `object-format=sha256`.
    pub capabilities: Vec<(String, String)>,
    /// Objects the receiving repository must already have; empty for a self-contained bundle.
    pub prerequisites: Vec<String>,
    /// `(oid, refname)` pairs.
    pub refs: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("not a git bundle (unknown signature)")]
    Signature,
    #[error("bundle header line {line} is malformed")]
    Malformed { line: usize },
    #[error("bundle header is larger than {MAX_HEADER_BYTES} bytes")]
    TooLarge,
}

/// Bytes read first when only a bundle's header is wanted; ours and the Python tool's fit in
/// far fewer.
pub const HEADER_PROBE_BYTES: u64 = 64 * 1024;

/// A header this large is not one we wrote or the Python tool did (theirs and ours name one
/// ref): refuse rather than buffer.
pub const MAX_HEADER_BYTES: usize = 1024 * 1024;

impl BundleHeader {
    /// The object format the bundle's objects are in (v2 bundles are always sha1).
    pub fn object_format(&self) -> &str {
        self.capabilities.iter().find(|(k, _)| k == "object-format").map_or("sha1", |(_, v)| v.as_str())
    }

    /// Why this header cannot be that of `<oid>.bundle`, if it cannot: its objects must be of the
    /// format the id in its key is, and it must name that id.
    pub fn mismatch(&self, oid: &str) -> Option<String> {
        let named = ObjectFormat::of_hex(oid).map_or("unknown", ObjectFormat::name);
        if self.object_format() != named {
            return Some(format!("it holds {} objects, its key names a {named} object", self.object_format()));
        }
        if !self.refs.iter().any(|(o, _)| o == oid) {
            return Some(format!("it does not contain {oid}, the object its key names"));
        }
        None
    }
}

/// Parses the header at the start of `buf`. Returns the header and its length in bytes (the
/// pack starts right after), or `None` when `buf` does not yet hold the whole header.
pub fn parse_header(buf: &[u8]) -> Result<Option<(BundleHeader, usize)>, HeaderError> {
    let mut header = BundleHeader::default();
    let mut pos = 0;
    let mut line_no = 0;
    loop {
        let Some(end) = buf[pos..].iter().position(|&b| b == b'\n') else {
            if buf.len() > MAX_HEADER_BYTES {
                return Err(HeaderError::TooLarge);
            }
            // Reject a wrong signature as soon as we can see it cannot match.
            if line_no == 0
                && !b"# v2 git bundle".starts_with(&buf[..buf.len().min(15)])
                && !b"# v3 git bundle".starts_with(&buf[..buf.len().min(15)])
            {
                return Err(HeaderError::Signature);
            }
            return Ok(None);
        };
        let line = &buf[pos..pos + end];
        pos += end + 1;
        line_no += 1;
        if line_no == 1 {
            header.version = match line {
                b"# v2 git bundle" => 2,
                b"# v3 git bundle" => 3,
                _ => return Err(HeaderError::Signature),
            };
            continue;
        }
        let text = std::str::from_utf8(line).map_err(|_| HeaderError::Malformed { line: line_no })?;
        if text.is_empty() {
            return Ok(Some((header, pos)));
        }
        let malformed = HeaderError::Malformed { line: line_no };
        if let Some(capability) = text.strip_prefix('@') {
            if header.version < 3 || !header.prerequisites.is_empty() || !header.refs.is_empty() {
                return Err(malformed);
            }
            let (key, value) = capability.split_once('=').unwrap_or((capability, ""));
            header.capabilities.push((key.to_string(), value.to_string()));
        } else if let Some(prerequisite) = text.strip_prefix('-') {
            let oid = prerequisite.split(' ').next().unwrap_or("");
            if !is_hex_oid(oid) {
                return Err(malformed);
            }
            header.prerequisites.push(oid.to_string());
        } else {
            let (oid, name) = text.split_once(' ').ok_or(malformed.clone())?;
            if !is_hex_oid(oid) || name.is_empty() {
                return Err(malformed);
            }
            header.refs.push((oid.to_string(), name.to_string()));
        }
    }
}

fn is_hex_oid(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";

    #[test]
    fn parses_a_v2_header_and_finds_the_pack() {
        let bytes = format!("# v2 git bundle\n-{B} parent commit\n{A} refs/heads/main\n\nPACK....");
        let (header, len) = parse_header(bytes.as_bytes()).unwrap().unwrap();
        assert_eq!(header.version, 2);
        assert_eq!(header.prerequisites, vec![B.to_string()]);
        assert_eq!(header.refs, vec![(A.to_string(), "refs/heads/main".to_string())]);
        assert_eq!(&bytes.as_bytes()[len..], b"PACK....");
    }

    #[test]
    fn parses_v3_capabilities() {
        let bytes = format!("# v3 git bundle\n@object-format=sha1\n{A} HEAD\n\n");
        let (header, _) = parse_header(bytes.as_bytes()).unwrap().unwrap();
        assert_eq!(header.capabilities, vec![("object-format".to_string(), "sha1".to_string())]);
    }

    #[test]
    fn a_header_must_name_the_object_its_key_names() {
        let bytes = format!("# v2 git bundle\n{A} refs/heads/main\n\n");
        let (header, _) = parse_header(bytes.as_bytes()).unwrap().unwrap();
        assert_eq!(header.mismatch(A), None);
        assert!(header.mismatch(B).is_some_and(|why| why.contains(B)));
        let sha256 = format!("# v3 git bundle\n@object-format=sha256\n{A} refs/heads/main\n\n");
        let (header, _) = parse_header(sha256.as_bytes()).unwrap().unwrap();
        assert!(header.mismatch(A).is_some_and(|why| why.contains("sha256")));
        let c = "c".repeat(64);
        let sha256 = format!("# v3 git bundle\n@object-format=sha256\n{c} refs/heads/main\n\n");
        let (header, _) = parse_header(sha256.as_bytes()).unwrap().unwrap();
        assert_eq!(header.mismatch(&c), None);
        let (header, _) =
            parse_header(format!("# v2 git bundle\n{A} refs/heads/main\n\n").as_bytes()).unwrap().unwrap();
        assert!(header.mismatch(&c).is_some_and(|why| why.contains("sha1 objects")));
    }

    #[test]
    fn incomplete_header_asks_for_more() {
        assert_eq!(parse_header(b"# v2 git bu"), Ok(None));
        assert_eq!(parse_header(format!("# v2 git bundle\n{A} refs/heads/main\n").as_bytes()), Ok(None));
    }

    #[test]
    fn garbage_is_refused() {
        assert_eq!(parse_header(b"<?xml version"), Err(HeaderError::Signature));
        assert_eq!(parse_header(b"\xff\xfe\n# v2 git bundle\n"), Err(HeaderError::Signature));
        assert_eq!(
            parse_header(b"# v2 git bundle\nnot-an-oid refs/heads/x\n\n"),
            Err(HeaderError::Malformed { line: 2 })
        );
        assert_eq!(parse_header(b"# v2 git bundle\n@object-format=sha1\n\n"), Err(HeaderError::Malformed { line: 2 }));
    }
}
