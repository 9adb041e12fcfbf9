//! Every line git (or anything else on our stdin) could send the remote helper.
#![no_main]

use git_s3_shim::helper_protocol::{Command, parse_line};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &str| {
    if let Ok(Command::Fetch { oid, .. }) = parse_line(line) {
        assert!(matches!(oid.len(), 40 | 64), "a fetch line yields a full sha1 or sha256 object id");
        assert!(oid.bytes().all(|b| b.is_ascii_hexdigit()));
    }
});
