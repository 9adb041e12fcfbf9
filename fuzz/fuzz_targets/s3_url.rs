//! Every remote URL a user could type; what parses must print back to something that parses
//! to the same thing.
#![no_main]

use git_s3_proto::url::S3Url;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|url: &str| {
    if let Ok(parsed) = S3Url::parse(url) {
        let again = S3Url::parse(&parsed.to_string()).expect("a parsed URL prints as a valid URL");
        assert_eq!(parsed, again);
    }
});
