//! Every line git (or anything else on our stdin) could send the remote helper.
#![no_main]

use git_s3_shim::helper_protocol::{Command, parse_line};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &str| {
    if let Ok(Command::Fetch { oid, .. }) = parse_line(line) {
        assert_eq!(oid.len(), 40, "a fetch line yields a full object id");
    }
});
