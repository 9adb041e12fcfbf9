//! Every bundle header an S3 object could start with: parsing never panics, and a header it
//! accepts ends inside the input.
#![no_main]

use git_s3d::store::bundles::header::parse_header;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((_, len))) = parse_header(data) {
        assert!(len <= data.len());
    }
});
