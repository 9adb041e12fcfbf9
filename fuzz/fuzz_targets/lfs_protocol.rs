//! Every line git-lfs (or anything else on our stdin) could send the transfer agent.
#![no_main]

use git_s3_shim::lfs_protocol::parse_request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &str| {
    let _ = parse_request(line);
});
