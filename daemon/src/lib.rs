//! git-s3d: the per-user daemon behind git-remote-s3, git-lfs-s3 and git-s3. It keeps warm S3
//! clients, does all S3 and git work on behalf of its thin clients, and listens on a private
//! Unix socket.

pub mod bucket;
pub mod clients;
pub mod config;
pub mod daemon;
pub mod git;
pub mod layout;
pub mod lfs;
pub mod lfs_endpoint;
pub mod lfs_sync;
pub mod listener;
pub mod listing_cache;
pub mod object_format;
pub mod progress;
pub mod quarantine;
pub mod remote;
pub mod requests;
pub mod scheduler;
pub mod scratch;
pub mod server;
pub mod shared_repository;
pub mod state;
pub mod store;
pub mod transfer;
