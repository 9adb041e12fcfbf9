//! The thin clients of git-s3d: protocol parsing and forwarding only. They never link the AWS
//! SDK; the daemon does all S3 work.

pub mod caller;
pub mod daemon_backend;
pub mod daemon_client;
pub mod helper_protocol;
pub mod lfs_agent;
pub mod lfs_protocol;
pub mod man_pages;
pub mod output;
pub mod progress;
pub mod remote_helper;
pub mod service;
pub mod terminal;
