//! The storage strategies behind `repository.rs`, a folder each. Today there is one, `bundles`:
//! the layout shared with the Python tool.

pub mod bundles;
