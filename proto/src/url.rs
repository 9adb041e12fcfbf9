//! Parses remote URLs: `s3://[profile@]bucket/prefix` and `s3+zip://…` (the latter also
//! publishes a zip of each pushed ref for AWS CodePipeline).

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct S3Url {
    pub profile: Option<String>,
    pub bucket: String,
    /// The key prefix, without leading or trailing `/`; never empty.
    pub prefix: String,
    pub zip: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("'{0}' is not an s3:// URL; use s3://[profile@]bucket/prefix")]
    NotS3(String),
    #[error("'{url}' has no bucket; use s3://[profile@]bucket/prefix")]
    NoBucket { url: String },
    #[error("'{url}' has no prefix; a repository needs its own folder, e.g. s3://{bucket}/my-repo")]
    NoPrefix { url: String, bucket: String },
    #[error("bucket name '{bucket}' is invalid: {why}")]
    BadBucket { bucket: String, why: &'static str },
    #[error("prefix '{prefix}' is invalid: {why}")]
    BadPrefix { prefix: String, why: &'static str },
    #[error("profile name in '{url}' is empty; drop the '@' or name a profile")]
    EmptyProfile { url: String },
}

impl S3Url {
    /// Accepts what git hands a remote helper: the URL itself, or the `<address>` of an
    /// `s3::<address>` remote, which may omit the scheme.
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let (zip, rest) = if let Some(rest) = url.strip_prefix("s3://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("s3+zip://") {
            (true, rest)
        } else if url.contains("://") {
            return Err(UrlError::NotS3(url.to_string()));
        } else {
            (false, url)
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (profile, bucket) = match authority.rsplit_once('@') {
            Some(("", _)) => {
                return Err(UrlError::EmptyProfile { url: url.to_string() });
            }
            Some((profile, bucket)) => (Some(profile.to_string()), bucket),
            None => (None, authority),
        };
        if bucket.is_empty() {
            return Err(UrlError::NoBucket { url: url.to_string() });
        }
        check_bucket(bucket)?;
        let prefix = path.trim_matches('/');
        if prefix.is_empty() {
            return Err(UrlError::NoPrefix { url: url.to_string(), bucket: bucket.to_string() });
        }
        check_prefix(prefix)?;
        Ok(Self { profile, bucket: bucket.to_string(), prefix: prefix.to_string(), zip })
    }
}

/// The host of LFS alias URLs: reserved (`.test`), never contacted.
pub const LFS_ALIAS_HOST: &str = "lfs-alias.git-remote-s3.test";

/// Where the Python tool's scoped `git-lfs-s3 install --remote` points `remote.<name>.lfsurl`:
/// never contacted, only a key for `lfs.<url>.standalonetransferagent` (a reserved `.test` host).
pub fn lfs_alias_url(bucket: &str, prefix: &str) -> String {
    let quoted: Vec<String> = prefix.split('/').map(percent_encode_segment).collect();
    format!("https://{LFS_ALIAS_HOST}/{bucket}/{}", quoted.join("/"))
}

/// The S3 location an LFS alias URL stands for (`None`: not an alias URL, or not a valid one).
/// An alias names no AWS profile: it may come from a committed `.lfsconfig`, and a repository
/// must not choose which of the user's credentials are used.
pub fn parse_lfs_alias(url: &str) -> Option<S3Url> {
    let path = url.strip_prefix("https://")?.strip_prefix(LFS_ALIAS_HOST)?.strip_prefix('/')?;
    let (bucket, quoted) = path.split_once('/')?;
    if bucket.contains('@') {
        return None;
    }
    let prefix: Vec<String> = quoted
        .split('/')
        .map(|segment| percent_encoding::percent_decode_str(segment).decode_utf8().map(|s| s.into_owned()))
        .collect::<Result<_, _>>()
        .ok()?;
    S3Url::parse(&format!("s3://{bucket}/{}", prefix.join("/"))).ok()
}

/// Percent-encodes everything but RFC 3986's unreserved characters (as Python's `quote(safe="")`).
fn percent_encode_segment(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl fmt::Display for S3Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.zip { "s3+zip" } else { "s3" };
        match &self.profile {
            Some(profile) => write!(f, "{scheme}://{profile}@{}/{}", self.bucket, self.prefix),
            None => write!(f, "{scheme}://{}/{}", self.bucket, self.prefix),
        }
    }
}

/// S3's naming rules for general purpose buckets.
fn check_bucket(bucket: &str) -> Result<(), UrlError> {
    let bad = |why| Err(UrlError::BadBucket { bucket: bucket.to_string(), why });
    if !(3..=63).contains(&bucket.len()) {
        return bad("it must be 3 to 63 characters long");
    }
    if !bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-') {
        return bad("only lowercase letters, digits, '.' and '-' are allowed (no '_' or capitals)");
    }
    let first_last_ok = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !first_last_ok(bucket.bytes().next()) || !first_last_ok(bucket.bytes().last()) {
        return bad("it must begin and end with a letter or digit");
    }
    if bucket.contains("..") || bucket.contains(".-") || bucket.contains("-.") {
        return bad("'.' may not stand next to another '.' or a '-'");
    }
    if bucket.parse::<std::net::Ipv4Addr>().is_ok() {
        return bad("it must not look like an IP address");
    }
    Ok(())
}

fn check_prefix(prefix: &str) -> Result<(), UrlError> {
    let bad = |why| Err(UrlError::BadPrefix { prefix: prefix.to_string(), why });
    if prefix.chars().any(char::is_control) {
        return bad("control characters are not allowed");
    }
    for segment in prefix.split('/') {
        match segment {
            "" => return bad("it has an empty path segment ('//')"),
            "." | ".." => return bad("'.' and '..' are not allowed as path segments"),
            _ => {}
        }
    }
    if prefix.len() > 512 {
        return bad("it is longer than 512 bytes");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_url() {
        let url = S3Url::parse("s3://my-bucket/team/repo").unwrap();
        assert_eq!(url, S3Url { profile: None, bucket: "my-bucket".into(), prefix: "team/repo".into(), zip: false });
        assert_eq!(url.to_string(), "s3://my-bucket/team/repo");
    }

    #[test]
    fn profile_zip_and_slashes() {
        let url = S3Url::parse("s3+zip://work@my.bucket//repo/").unwrap();
        assert_eq!(url.profile.as_deref(), Some("work"));
        assert_eq!(url.bucket, "my.bucket");
        assert_eq!(url.prefix, "repo");
        assert!(url.zip);
    }

    #[test]
    fn address_of_double_colon_form() {
        assert_eq!(S3Url::parse("bucket/repo").unwrap().bucket, "bucket");
    }

    #[test]
    fn lfs_alias_matches_the_python_tool() {
        assert_eq!(
            lfs_alias_url("bucket", "team/repo%zz"),
            "https://lfs-alias.git-remote-s3.test/bucket/team/repo%25zz"
        );
        assert_eq!(lfs_alias_url("b", "a b"), "https://lfs-alias.git-remote-s3.test/b/a%20b");
    }

    #[test]
    fn lfs_alias_urls_name_their_s3_location() {
        for (bucket, prefix) in [("bucket", "team/repo%zz"), ("my-bucket", "a b/c")] {
            let parsed = parse_lfs_alias(&lfs_alias_url(bucket, prefix)).unwrap();
            assert_eq!((parsed.bucket.as_str(), parsed.prefix.as_str()), (bucket, prefix));
        }
        assert!(parse_lfs_alias("https://example.com/bucket/p").is_none());
        assert!(parse_lfs_alias("https://lfs-alias.git-remote-s3.test/bucket").is_none());
        assert!(parse_lfs_alias("https://lfs-alias.git-remote-s3.test/admin@bucket/p").is_none(), "no profile");
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        let err = |u: &str| S3Url::parse(u).unwrap_err().to_string();
        assert!(err("s3://my_bucket/r").contains("no '_'"));
        assert!(err("s3://ab/r").contains("3 to 63"));
        assert!(err("s3://bucket").contains("has no prefix"));
        assert!(err("s3://bucket/").contains("has no prefix"));
        assert!(err("s3://@bucket/r").contains("profile name"));
        assert!(err("https://bucket/r").contains("not an s3:// URL"));
        assert!(err("s3://192.168.1.1/r").contains("IP address"));
        assert!(err("s3://bucket/a//b").contains("empty path segment"));
        assert!(err("s3://bucket/a/../b").contains("'..'"));
        assert!(err("s3://-bucket/r").contains("begin and end"));
        assert!(err("s3:///r").contains("no bucket"));
    }
}
