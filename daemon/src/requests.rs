//! What a request must carry before the daemon acts on it. Every handler passes its request
//! through here first; nothing in this module touches the network, git or the disk, so it can be
//! fuzzed on its own (`fuzz/fuzz_targets/grpc_requests.rs`).

use std::collections::HashMap;
use std::sync::Arc;

use git_s3_proto as proto;

use crate::layout::{check_refname, is_lfs_oid};
use crate::object_format::ObjectFormat;
use crate::remote::CallerContext;
use crate::store::{PushBatch, PushCommand};

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRequest {
    #[error("the request names no caller")]
    NoCaller,
    #[error("the request names no remote")]
    NoRemote,
    #[error("the caller's working directory must be an absolute path")]
    RelativeCwd,
    #[error("'{name}' is not a ref name git accepts: {why}")]
    BadRef { name: String, why: &'static str },
    #[error("{what} '{oid}' is not an object id (40 or 64 lowercase hex digits)")]
    BadOid { what: &'static str, oid: String },
    #[error("'{src}' cannot be pushed: a source must not start with '-'")]
    BadSource { src: String },
    #[error("'{0}' is not a git-lfs object id (64 lowercase hex digits)")]
    BadLfsOid(String),
    #[error("an LFS upload needs the absolute path of the file to send")]
    RelativeLfsPath,
}

impl From<InvalidRequest> for tonic::Status {
    fn from(e: InvalidRequest) -> Self {
        tonic::Status::invalid_argument(e.to_string())
    }
}

/// The caller and remote every repository request names.
pub fn caller_and_remote(
    caller: Option<proto::Caller>,
    remote: Option<proto::Remote>,
) -> Result<(CallerContext, proto::Remote), InvalidRequest> {
    let caller = caller_context(caller)?;
    let remote = remote.ok_or(InvalidRequest::NoRemote)?;
    Ok((caller, remote))
}

pub fn caller_context(caller: Option<proto::Caller>) -> Result<CallerContext, InvalidRequest> {
    let caller = caller.ok_or(InvalidRequest::NoCaller)?;
    if !caller.cwd.starts_with('/') {
        return Err(InvalidRequest::RelativeCwd);
    }
    Ok(CallerContext { cwd: caller.cwd.into(), env: Arc::new(caller.env) })
}

/// The refs a fetch wants, each a valid ref name with a full object id.
pub fn fetch_wanted(wanted: Vec<proto::RemoteRef>) -> Result<Vec<(String, String)>, InvalidRequest> {
    wanted
        .into_iter()
        .map(|r| {
            refname(&r.name)?;
            oid("wanted object", &r.oid, false)?;
            Ok((r.name, r.oid))
        })
        .collect()
}

/// A push batch. A destination git would refuse is reported per ref later (git shows it next
/// to that ref), but object ids and sources are checked here: they reach git's command line.
pub fn push_batch(request: &mut proto::PushRequest) -> Result<PushBatch, InvalidRequest> {
    let mut commands = Vec::with_capacity(request.commands.len());
    for c in std::mem::take(&mut request.commands) {
        if c.src.starts_with('-') {
            return Err(InvalidRequest::BadSource { src: c.src });
        }
        commands.push(PushCommand { src: c.src, dst: c.dst, force: c.force });
    }
    let mut advertised = HashMap::new();
    for r in std::mem::take(&mut request.advertised) {
        oid("advertised object", &r.oid, false)?;
        advertised.insert(r.name, r.oid);
    }
    let mut leases = HashMap::new();
    for lease in std::mem::take(&mut request.leases) {
        oid("expected object", lease.expected_oid.trim(), true)?;
        leases.insert(lease.dst, lease.expected_oid);
    }
    Ok(PushBatch {
        commands,
        advertised,
        leases,
        dry_run: request.dry_run,
        atomic: request.atomic,
        remote_format: None,
    })
}

/// An LFS transfer: a proper object id, and for uploads an absolute path (whether it lies
/// inside the repository is checked against the disk when the upload starts).
pub fn lfs_transfer(transfer: &proto::LfsTransfer, upload: bool) -> Result<(), InvalidRequest> {
    if !is_lfs_oid(&transfer.oid) {
        return Err(InvalidRequest::BadLfsOid(transfer.oid.clone()));
    }
    if upload && !transfer.path.starts_with('/') {
        return Err(InvalidRequest::RelativeLfsPath);
    }
    Ok(())
}

fn refname(name: &str) -> Result<(), InvalidRequest> {
    check_refname(name).map_err(|why| InvalidRequest::BadRef { name: name.to_string(), why })
}

fn oid(what: &'static str, oid: &str, may_be_empty: bool) -> Result<(), InvalidRequest> {
    if ObjectFormat::of_hex(oid).is_some() || (may_be_empty && oid.is_empty()) {
        Ok(())
    } else {
        Err(InvalidRequest::BadOid { what, oid: oid.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OID: &str = "0123456789abcdef0123456789abcdef01234567";

    fn caller() -> Option<proto::Caller> {
        Some(proto::Caller { cwd: "/repo".into(), ..Default::default() })
    }

    #[test]
    fn a_caller_needs_an_absolute_working_directory() {
        assert!(caller_context(caller()).is_ok());
        let relative = Some(proto::Caller { cwd: "repo".into(), ..Default::default() });
        assert_eq!(caller_context(relative).err(), Some(InvalidRequest::RelativeCwd));
        assert_eq!(caller_context(None).err(), Some(InvalidRequest::NoCaller));
        assert_eq!(caller_and_remote(caller(), None).err(), Some(InvalidRequest::NoRemote));
    }

    #[test]
    fn fetches_want_valid_refs_and_full_object_ids() {
        let want = |name: &str, oid: &str| vec![proto::RemoteRef { name: name.into(), oid: oid.into() }];
        assert!(fetch_wanted(want("refs/heads/main", OID)).is_ok());
        assert!(matches!(fetch_wanted(want("refs/heads/../x", OID)), Err(InvalidRequest::BadRef { .. })));
        assert!(matches!(fetch_wanted(want("refs/heads/main", "abc")), Err(InvalidRequest::BadOid { .. })));
        let upper = OID.to_uppercase();
        assert!(matches!(fetch_wanted(want("refs/heads/main", &upper)), Err(InvalidRequest::BadOid { .. })));
    }

    #[test]
    fn pushes_refuse_option_like_sources_and_bad_object_ids() {
        let command = |src: &str| proto::PushCommand { src: src.into(), dst: "refs/heads/main".into(), force: false };
        let mut request = proto::PushRequest { commands: vec![command("--upload-pack=evil")], ..Default::default() };
        assert!(matches!(push_batch(&mut request), Err(InvalidRequest::BadSource { .. })));

        let mut request = proto::PushRequest {
            commands: vec![command("HEAD"), command("")],
            advertised: vec![proto::RemoteRef { name: "refs/heads/main".into(), oid: OID.into() }],
            leases: vec![proto::Lease { dst: "refs/heads/main".into(), expected_oid: String::new() }],
            ..Default::default()
        };
        let batch = push_batch(&mut request).expect("valid batch");
        assert_eq!(batch.commands.len(), 2);
        assert_eq!(batch.advertised.get("refs/heads/main").map(String::as_str), Some(OID));

        let mut request = proto::PushRequest {
            leases: vec![proto::Lease { dst: "refs/heads/main".into(), expected_oid: "HEAD~1".into() }],
            ..Default::default()
        };
        assert!(matches!(push_batch(&mut request), Err(InvalidRequest::BadOid { .. })));
    }

    #[test]
    fn lfs_transfers_need_a_sha256_and_uploads_an_absolute_path() {
        let oid = "a".repeat(64);
        let transfer = |oid: &str, path: &str| proto::LfsTransfer { oid: oid.into(), size: 1, path: path.into() };
        assert!(lfs_transfer(&transfer(&oid, "/repo/.git/lfs/objects/aa/aa/x"), true).is_ok());
        assert!(lfs_transfer(&transfer(&oid, ""), false).is_ok());
        assert_eq!(lfs_transfer(&transfer(&oid, "relative"), true).err(), Some(InvalidRequest::RelativeLfsPath));
        assert!(matches!(lfs_transfer(&transfer(&"a".repeat(63), "/x"), true), Err(InvalidRequest::BadLfsOid(_))));
        assert!(matches!(lfs_transfer(&transfer("../../etc/passwd", "/x"), true), Err(InvalidRequest::BadLfsOid(_))));
    }
}
