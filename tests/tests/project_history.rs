//! A real project's shape in the shared layout: a long main line, 40 branches, 300 annotated
//! tags. Every ref is a whole bundle of its history, for us as for the Python tool, yet a clone of
//! what we pushed downloads the history about once: every bundle we write is the pack of a commit
//! other refs hold, then the ref's own objects as a segment its metadata records. The Python tool
//! reads the same bundles as its own. Bytes are counted on the wire, by a proxy.

use std::path::Path;

use git_s3_tests::fault_proxy::FaultProxy;
use git_s3_tests::project::{ProjectShape, project_repository};
use git_s3_tests::{ServerKind, TestEnv};

/// What a clone of what we pushed may download, against the history as one bundle.
const CLONE_OF_OURS_MAX_RATIO: f64 = 1.5;
/// What a clone of what the Python tool pushed may download, against the Python tool's own clone.
const CLONE_OF_THEIRS_MAX_RATIO: f64 = 1.0 / 3.0;
/// What the bucket holds for our push (and the Python tool downloads of it), against the Python
/// tool's own push of the same refs (k): each bundle holds what `git bundle create` puts in it,
/// with thin segments that compress a little less, and a few objects more where it starts with
/// another ref's bundle.
const STORAGE_MAX_RATIO: f64 = 1.1;

/// `<oid> <refname>` of every branch and tag.
fn refs_of(env: &TestEnv, repo: &Path) -> Vec<String> {
    let listed = env.git_ok(repo, &["for-each-ref", "--format=%(objectname) %(refname)", "refs/heads/", "refs/tags/"]);
    let mut refs: Vec<String> = listed.lines().map(str::to_string).collect();
    refs.sort();
    refs
}

/// Tags fetched as their tag object alone, so far.
fn tag_objects(env: &TestEnv) -> usize {
    env.daemon_log().matches("fetched only the tag object").count()
}

/// Runs `clone` with S3 behind the counting proxy; returns the bytes S3 sent meanwhile. (Pushes
/// go straight to the server: they move a GiB, and the proxy is there to count clones.)
fn downloaded(env: &mut TestEnv, proxy: &FaultProxy, clone: impl FnOnce(&TestEnv)) -> u64 {
    let direct = env.server.endpoint.clone();
    for key in ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"] {
        env.set_env(key, &proxy.endpoint);
    }
    proxy.reset_traffic();
    clone(env);
    let down = proxy.traffic().down_bytes;
    for key in ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"] {
        env.set_env(key, &direct);
    }
    down
}

#[test]
fn a_projects_history_is_downloaded_about_once_whoever_pushed_it() {
    let mut env = TestEnv::with_server(ServerKind::S3sFs);
    let proxy = FaultProxy::start(&env.server.endpoint);
    let shape = ProjectShape::PROJECT;
    let project = project_repository(&env, "project", shape);
    // fast-import stores every blob whole; a real project's history is packed with deltas.
    env.git_ok(&project, &["repack", "-a", "-d", "-f", "-q"]);
    let all = env.path("all.bundle");
    env.git_ok(&project, &["bundle", "create", "-q", &all.to_string_lossy(), "--all"]);
    let history = std::fs::metadata(&all).expect("bundle").len();
    let expected = refs_of(&env, &project);
    assert_eq!(expected.len(), shape.refs());

    // Each tool mirrors the project to its own prefix.
    env.git_ok(&project, &["push", "-q", "--mirror", &env.url("ours")]);
    env.python_git_ok(&project, &["push", "-q", "--mirror", &env.url("theirs")]);
    let held = |prefix: &str| env.server.bytes_and_keys_held(&env.bucket, &format!("{prefix}/")).0;
    let (ours, theirs) = (held("ours"), held("theirs"));
    assert!(
        ours as f64 <= theirs as f64 * STORAGE_MAX_RATIO,
        "our push stores {ours} bytes, the Python tool's {theirs}"
    );

    // Our clone of what we pushed: the history about once, every ref as pushed.
    let clone = env.path("clone");
    let down = downloaded(&mut env, &proxy, |env| {
        env.git_ok(&env.path(""), &["clone", "-q", "--mirror", &env.url("ours"), &clone.to_string_lossy()]);
    });
    assert!(
        down as f64 <= history as f64 * CLONE_OF_OURS_MAX_RATIO,
        "the clone downloaded {down} bytes, the history is {history} as one bundle"
    );
    env.git_ok(&clone, &["fsck", "--strict", "--no-dangling"]);
    assert_eq!(refs_of(&env, &clone), expected);
    let log = env.daemon_log();
    assert!(log.matches("fetching only the change").count() >= shape.refs() - 2, "few segments fetched");

    // The Python tool's clone of what we pushed: the same refs, and the bytes its own push stores.
    let python_clone = env.path("python-clone");
    let python_down = downloaded(&mut env, &proxy, |env| {
        env.python_git_ok(
            &env.path(""),
            &["clone", "-q", "--mirror", &env.url("ours"), &python_clone.to_string_lossy()],
        );
    });
    // Its `git bundle unbundle` checked every object's id as it indexed the bundles.
    env.git_ok(&python_clone, &["fsck", "--connectivity-only", "--no-dangling"]);
    assert_eq!(refs_of(&env, &python_clone), expected);
    assert!(
        python_down as f64 <= theirs as f64 * STORAGE_MAX_RATIO,
        "the Python tool downloaded {python_down} bytes of ours; its own push stores {theirs}"
    );

    // Our clone of what the Python tool pushed: tags that our clone already has the target of
    // cost their tag object; the Python tool's own clone downloads every bundle whole.
    let of_theirs = env.path("clone-of-theirs");
    let tag_objects_before = tag_objects(&env);
    let down = downloaded(&mut env, &proxy, |env| {
        env.git_ok(&env.path(""), &["clone", "-q", "--mirror", &env.url("theirs"), &of_theirs.to_string_lossy()]);
    });
    assert!(
        down as f64 <= theirs as f64 * CLONE_OF_THEIRS_MAX_RATIO,
        "our clone of the Python tool's push downloaded {down} bytes; it stores {theirs}"
    );
    env.git_ok(&of_theirs, &["fsck", "--strict", "--no-dangling"]);
    assert_eq!(refs_of(&env, &of_theirs), expected);
    assert_eq!(tag_objects(&env) - tag_objects_before, shape.tags + shape.branch_tags, "every tag as its tag object");

    // main, the base of most segments, rewritten: whatever records a base no ref reaches any
    // more is fetched whole, and the clone is complete.
    env.git_ok(&project, &["checkout", "-q", "-B", "main", "main~40"]);
    env.commit(&project, "rewritten.txt", "history rewritten\n", "rewrite main");
    env.git_ok(&project, &["push", "-q", "--force", &env.url("ours"), "main"]);
    let after = env.path("clone-after-rewrite");
    let whole_before = env.daemon_log().matches("fetching the whole bundle").count();
    env.git_ok(&env.path(""), &["clone", "-q", "--mirror", &env.url("ours"), &after.to_string_lossy()]);
    let whole = env.daemon_log().matches("fetching the whole bundle").count() - whole_before;
    assert!(whole >= 2, "the rewritten trunk and a ref on the old one are fetched whole: {whole} were");
    env.git_ok(&after, &["fsck", "--strict", "--no-dangling"]);
    assert_eq!(refs_of(&env, &after), refs_of(&env, &project));
}
