//! `s3+zip://` remotes: beside each pushed ref, a zip of its tree for AWS CodePipeline's S3
//! source, whatever the storage format.

use super::StoreError;
use crate::bucket::{Bucket, PutOptions};
use crate::git::Git;
use crate::layout::Layout;

/// Writes `P/<dst>/repo.zip`: the tree of `oid`, with the summary CodePipeline shows.
pub(crate) async fn publish_zip(
    bucket: &Bucket,
    layout: &Layout,
    git: &Git,
    dst: &str,
    oid: &str,
) -> Result<(), StoreError> {
    let summary = git.run(&["log", "-1", "--pretty=%h %s", oid]).await?;
    let zip = git.run_bytes(&["archive", "--format=zip", oid]).await?;
    let options = PutOptions {
        metadata: vec![("codepipeline-artifact-revision-summary".into(), summary)],
        content_disposition: Some(format!("attachment; filename=repo-{}.zip", &oid[..8.min(oid.len())])),
        ..Default::default()
    };
    bucket.put_bytes(&layout.zip(dst), zip, options).await?;
    Ok(())
}
