//! git's two object formats: SHA-1 and SHA-256. An id's length tells them apart (40 or 64 hex
//! digits), and a pack ends with a trailer of the same hash over its bytes.

use sha1::Digest;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectFormat {
    Sha1,
    Sha256,
}

/// The bytes of the longer of the two ids.
const MAX_OID_BYTES: usize = 32;

impl ObjectFormat {
    /// The name git uses (`--object-format=`, `@object-format=`, `:object-format`).
    pub fn name(self) -> &'static str {
        match self {
            ObjectFormat::Sha1 => "sha1",
            ObjectFormat::Sha256 => "sha256",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "sha1" => Some(ObjectFormat::Sha1),
            "sha256" => Some(ObjectFormat::Sha256),
            _ => None,
        }
    }

    /// The format of an object id in lowercase hex, if it is one.
    pub fn of_hex(oid: &str) -> Option<Self> {
        if !oid.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return None;
        }
        match oid.len() {
            40 => Some(ObjectFormat::Sha1),
            64 => Some(ObjectFormat::Sha256),
            _ => None,
        }
    }

    /// Bytes of an id, and of a pack's trailer.
    pub fn raw_len(self) -> usize {
        match self {
            ObjectFormat::Sha1 => 20,
            ObjectFormat::Sha256 => 32,
        }
    }

    /// A pack's trailer: the hash of everything before it.
    pub fn trailer_bytes(self) -> u64 {
        self.raw_len() as u64
    }

    pub fn hasher(self) -> PackHasher {
        match self {
            ObjectFormat::Sha1 => PackHasher::Sha1(sha1::Sha1::new()),
            ObjectFormat::Sha256 => PackHasher::Sha256(sha2::Sha256::new()),
        }
    }
}

impl std::fmt::Display for ObjectFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The hash of a pack in either format.
pub enum PackHasher {
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
}

impl PackHasher {
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            PackHasher::Sha1(h) => h.update(bytes),
            PackHasher::Sha256(h) => h.update(bytes),
        }
    }

    pub fn finalize(self) -> Vec<u8> {
        match self {
            PackHasher::Sha1(h) => h.finalize().to_vec(),
            PackHasher::Sha256(h) => h.finalize().to_vec(),
        }
    }
}

/// An object id of either format, held in a fixed-size array as git's own `struct object_id`
/// is, so sets of millions of them cost no allocation each.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Oid {
    bytes: [u8; MAX_OID_BYTES],
    len: u8,
}

impl Oid {
    pub fn from_bytes(raw: &[u8]) -> Option<Self> {
        if raw.len() != 20 && raw.len() != MAX_OID_BYTES {
            return None;
        }
        let mut bytes = [0u8; MAX_OID_BYTES];
        bytes[..raw.len()].copy_from_slice(raw);
        Some(Self { bytes, len: raw.len() as u8 })
    }

    /// An id in hex (40 or 64 digits, either case).
    pub fn from_hex(text: &str) -> Option<Self> {
        let len = match text.len() {
            40 => 20,
            64 => MAX_OID_BYTES,
            _ => return None,
        };
        let mut bytes = [0u8; MAX_OID_BYTES];
        hex::decode_to_slice(text, &mut bytes[..len]).ok()?;
        Some(Self { bytes, len: len as u8 })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.as_bytes())
    }
}

impl std::fmt::Debug for Oid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA1: &str = "00ff10aa00ff10aa00ff10aa00ff10aa00ff10aa";

    #[test]
    fn ids_of_both_formats_round_trip_through_hex() {
        let sha256 = SHA1.to_string() + "0123456789abcdef01234567";
        for text in [SHA1, sha256.as_str()] {
            let oid = Oid::from_hex(text).unwrap();
            assert_eq!(oid.to_hex(), text);
            assert_eq!(Oid::from_bytes(oid.as_bytes()), Some(oid));
        }
        assert_ne!(Oid::from_hex(SHA1), Oid::from_hex(&format!("{SHA1}{}", "0".repeat(24))));
        assert!(Oid::from_hex("xyz").is_none());
        assert!(Oid::from_bytes(&[0; 21]).is_none());
    }

    #[test]
    fn formats_are_told_apart_by_length() {
        assert_eq!(ObjectFormat::of_hex(SHA1), Some(ObjectFormat::Sha1));
        assert_eq!(ObjectFormat::of_hex(&"a".repeat(64)), Some(ObjectFormat::Sha256));
        assert_eq!(ObjectFormat::of_hex(&"A".repeat(40)), None);
        assert_eq!(ObjectFormat::of_hex("abc"), None);
        assert_eq!(ObjectFormat::from_name("sha256").map(ObjectFormat::trailer_bytes), Some(32));
    }

    #[test]
    fn pack_hashers_are_the_formats_hashes() {
        let mut sha1 = ObjectFormat::Sha1.hasher();
        sha1.update(b"abc");
        assert_eq!(hex::encode(sha1.finalize()), "a9993e364706816aba3e25717850c26c9cd0d89d");
        let mut sha256 = ObjectFormat::Sha256.hasher();
        sha256.update(b"abc");
        assert_eq!(hex::encode(sha256.finalize()), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
