//! The contract between the git-remote-s3 clients and the git-s3d daemon: the gRPC API
//! (generated from `proto/git_s3.proto`), where the daemon listens, and what a remote URL means.

#![allow(clippy::large_enum_variant)]

tonic::include_proto!("gits3.v1");

/// Bumped whenever the API changes in a way an older peer would misunderstand.
pub const PROTOCOL_VERSION: u32 = 1;

/// The version both sides compare in the handshake: a shim never talks to a daemon of another build.
pub const BUILD_VERSION: &str = env!("CARGO_PKG_VERSION");

pub mod endpoint;
pub mod url;
