//! The remote-helper session: reads git's commands, answers on stdout, and hands the work to a
//! backend (the daemon). Generic over its input, output and backend, so the whole protocol is
//! testable without processes. stdout belongs to git; people read stderr.

use std::collections::HashMap;

use git_s3_proto::{FetchDone, Lease, ListRefsReply, PushCommand, PushDone, RemoteRef, Verbosity};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

use crate::helper_protocol::{Command, ParseError, parse_line, quote_reason};

pub const CAPABILITIES: &[&str] = &["option", "fetch", "push", "object-format"];

#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    #[error("{0}")]
    Protocol(#[from] ParseError),
    #[error("talking to git failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Remote(String),
}

/// What git asked for with `option` lines.
#[derive(Debug, Clone)]
pub struct Options {
    pub verbosity: i32,
    pub progress: bool,
    pub dry_run: bool,
    pub atomic: bool,
    pub object_format: bool,
    pub cloning: bool,
    pub leases: Vec<Lease>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            verbosity: 1,
            progress: false,
            dry_run: false,
            atomic: false,
            object_format: false,
            cloning: false,
            leases: Vec::new(),
        }
    }
}

pub enum OptionReply {
    Ok,
    Unsupported,
    Error(String),
}

impl Options {
    pub fn apply(&mut self, name: &str, value: &str) -> OptionReply {
        let flag = |value: &str| match value {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        };
        let set = |slot: &mut bool| match flag(value) {
            Some(v) => {
                *slot = v;
                OptionReply::Ok
            }
            None => OptionReply::Error(format!("'{value}' is not true or false")),
        };
        match name {
            "verbosity" => match value.parse() {
                Ok(level) => {
                    self.verbosity = level;
                    OptionReply::Ok
                }
                Err(_) => OptionReply::Error(format!("'{value}' is not a number")),
            },
            "progress" => set(&mut self.progress),
            "dry-run" => set(&mut self.dry_run),
            "atomic" => set(&mut self.atomic),
            // `list` then names the remote's object format (`:object-format sha256`): git reads
            // the ids in that format, and a clone takes it.
            "object-format" => match value {
                "true" | "sha1" | "sha256" => {
                    self.object_format = true;
                    OptionReply::Ok
                }
                _ => OptionReply::Unsupported,
            },
            "cas" => match value.split_once(':') {
                Some((dst, expected)) if !dst.is_empty() => {
                    self.leases.push(Lease { dst: dst.to_string(), expected_oid: expected.to_string() });
                    OptionReply::Ok
                }
                _ => OptionReply::Error(format!("'{value}' is not <ref>:<expected object>")),
            },
            // Accepted so `git push -o …` works; an S3 remote has no hooks to hand them to.
            "push-option" => OptionReply::Ok,
            // Bundles are whole: tags come with the history they point into, and git fetches a
            // tag it still lacks by itself.
            "cloning" => set(&mut self.cloning),
            "followtags" | "force-if-includes" => match flag(value) {
                Some(_) => OptionReply::Ok,
                None => OptionReply::Error(format!("'{value}' is not true or false")),
            },
            // Shallow and partial clones would need history cut out of bundles.
            _ => OptionReply::Unsupported,
        }
    }

    pub fn verbosity(&self) -> Verbosity {
        Verbosity { level: self.verbosity, progress: self.progress && self.verbosity > 0 }
    }
}

/// The push batch as the daemon needs it.
#[derive(Debug, Clone)]
pub struct PushRequest {
    pub commands: Vec<PushCommand>,
    pub advertised: Vec<RemoteRef>,
    pub options: Options,
}

/// Where the work is done.
#[allow(async_fn_in_trait)]
pub trait Backend {
    async fn list(&mut self, for_push: bool) -> Result<ListRefsReply, String>;
    async fn fetch(&mut self, wanted: Vec<RemoteRef>, options: &Options) -> Result<FetchDone, String>;
    async fn push(&mut self, request: PushRequest) -> Result<PushDone, String>;
}

/// Serves one helper session until git closes it.
pub async fn run<R, W, B>(input: R, output: W, backend: &mut B) -> Result<(), HelperError>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
    B: Backend,
{
    let mut extra_locks = Vec::new();
    let result = serve(input, output, backend, &mut extra_locks).await;
    // git lets us go only after it has updated its refs (or given up): the packs need no keep.
    for lock in extra_locks {
        let _ = tokio::fs::remove_file(lock).await;
    }
    result
}

async fn serve<R, W, B>(
    input: R,
    mut output: W,
    backend: &mut B,
    extra_locks: &mut Vec<String>,
) -> Result<(), HelperError>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
    B: Backend,
{
    let mut lines = input.lines();
    let mut options = Options::default();
    // What `list` told git, for the `fetch first` check of pushes.
    let mut advertised: HashMap<String, String> = HashMap::new();
    let mut fetches: Vec<RemoteRef> = Vec::new();
    let mut pushes: Vec<PushCommand> = Vec::new();
    while let Some(line) = lines.next_line().await? {
        let reply = match parse_line(&line)? {
            Command::Capabilities => CAPABILITIES.iter().map(|c| format!("{c}\n")).collect::<String>() + "\n",
            Command::Option { name, value } => match options.apply(&name, &value) {
                OptionReply::Ok => "ok\n".to_string(),
                OptionReply::Unsupported => "unsupported\n".to_string(),
                OptionReply::Error(why) => format!("error {why}\n"),
            },
            Command::List { for_push } => {
                let listing = backend.list(for_push).await.map_err(HelperError::Remote)?;
                advertised = listing.refs.iter().map(|r| (r.name.clone(), r.oid.clone())).collect();
                render_list(&listing, for_push, options.object_format)
            }
            Command::Fetch { oid, name } => {
                fetches.push(RemoteRef { name, oid });
                continue;
            }
            Command::Push { src, dst, force } => {
                pushes.push(PushCommand { src, dst, force });
                continue;
            }
            Command::Blank if !fetches.is_empty() => {
                let done = backend.fetch(std::mem::take(&mut fetches), &options).await.map_err(HelperError::Remote)?;
                // git takes one lock line and deletes that .keep once its refs are updated; the
                // others are ours to delete when git lets us go.
                let mut locks = done.pack_locks.into_iter();
                let lock = locks.next().map(|path| format!("lock {path}\n")).unwrap_or_default();
                extra_locks.extend(locks);
                lock + "\n"
            }
            Command::Blank if !pushes.is_empty() => {
                let commands = std::mem::take(&mut pushes);
                let advertised = commands
                    .iter()
                    .filter_map(|c| {
                        advertised.get(&c.dst).map(|oid| RemoteRef { name: c.dst.clone(), oid: oid.clone() })
                    })
                    .collect();
                let request = PushRequest { commands, advertised, options: options.clone() };
                let done = backend.push(request).await.map_err(HelperError::Remote)?;
                options.leases.clear();
                render_push(&done)
            }
            Command::Blank => break,
        };
        output.write_all(reply.as_bytes()).await?;
        output.flush().await?;
    }
    Ok(())
}

fn render_list(listing: &ListRefsReply, for_push: bool, object_format: bool) -> String {
    let mut out = String::new();
    if object_format {
        // Unknown (an empty remote listed outside a repository): git's default.
        let format = if listing.object_format.is_empty() { "sha1" } else { listing.object_format.as_str() };
        out.push_str(&format!(":object-format {format}\n"));
    }
    if !for_push && !listing.head.is_empty() {
        out.push_str(&format!("@{} HEAD\n", listing.head));
    }
    for r in &listing.refs {
        out.push_str(&format!("{} {}\n", r.oid, r.name));
    }
    out.push('\n');
    out
}

fn render_push(done: &PushDone) -> String {
    let mut out = String::new();
    for status in &done.statuses {
        if status.error.is_empty() {
            let forced = if status.forced { " forced update" } else { "" };
            out.push_str(&format!("ok {}{forced}\n", status.dst));
        } else {
            out.push_str(&format!("error {} {}\n", status.dst, quote_reason(&status.error)));
        }
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use git_s3_proto::RefStatus;

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";

    #[derive(Default)]
    struct FakeRemote {
        refs: Vec<RemoteRef>,
        fetched: Vec<Vec<RemoteRef>>,
        pushed: Vec<PushRequest>,
        /// The keep files a fetch reports; one made-up path when empty.
        locks: Vec<String>,
    }

    impl Backend for FakeRemote {
        async fn list(&mut self, _for_push: bool) -> Result<ListRefsReply, String> {
            Ok(ListRefsReply {
                refs: self.refs.clone(),
                head: "refs/heads/main".into(),
                warnings: Vec::new(),
                object_format: "sha1".into(),
            })
        }

        async fn fetch(&mut self, wanted: Vec<RemoteRef>, _options: &Options) -> Result<FetchDone, String> {
            self.fetched.push(wanted);
            let locks = if self.locks.is_empty() {
                vec!["/repo/.git/objects/pack/pack-1.keep".into()]
            } else {
                self.locks.clone()
            };
            Ok(FetchDone { pack_locks: locks })
        }

        async fn push(&mut self, request: PushRequest) -> Result<PushDone, String> {
            let statuses = request
                .commands
                .iter()
                .map(|c| RefStatus {
                    dst: c.dst.clone(),
                    error: if c.dst.ends_with("bad") { "non-fast forward".into() } else { String::new() },
                    forced: c.force,
                })
                .collect();
            self.pushed.push(request);
            Ok(PushDone { statuses })
        }
    }

    async fn session(input: &str, remote: &mut FakeRemote) -> String {
        let mut out = Vec::new();
        run(input.as_bytes(), &mut out, remote).await.unwrap();
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn clone_session() {
        let mut remote = FakeRemote {
            refs: vec![RemoteRef { name: "refs/heads/main".into(), oid: A.into() }],
            ..Default::default()
        };
        let out = session(
            &format!("capabilities\noption object-format true\nlist\nfetch {A} refs/heads/main\n\n\n"),
            &mut remote,
        )
        .await;
        assert_eq!(
            out,
            format!(
                "option\nfetch\npush\nobject-format\n\nok\n:object-format sha1\n@refs/heads/main HEAD\n{A} refs/heads/main\n\nlock /repo/.git/objects/pack/pack-1.keep\n\n"
            )
        );
        assert_eq!(remote.fetched, vec![vec![RemoteRef { name: "refs/heads/main".into(), oid: A.into() }]]);
    }

    #[tokio::test]
    async fn git_gets_one_lock_and_the_other_keep_files_go_when_git_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let locks: Vec<String> = (1..=3)
            .map(|i| {
                let path = dir.path().join(format!("pack-{i}.keep"));
                std::fs::write(&path, "git-remote-s3 fetch").unwrap();
                path.display().to_string()
            })
            .collect();
        let mut remote = FakeRemote {
            refs: vec![RemoteRef { name: "refs/heads/main".into(), oid: A.into() }],
            locks: locks.clone(),
            ..Default::default()
        };
        let out = session(&format!("list\nfetch {A} refs/heads/main\n\n\n"), &mut remote).await;
        assert!(out.ends_with(&format!("lock {}\n\n", locks[0])), "{out}");
        assert!(std::path::Path::new(&locks[0]).exists(), "git removes the lock it was given");
        assert!(locks[1..].iter().all(|l| !std::path::Path::new(l).exists()), "the others are removed");
    }

    #[tokio::test]
    async fn push_batch_carries_what_was_advertised_and_the_lease() {
        let mut remote = FakeRemote {
            refs: vec![RemoteRef { name: "refs/heads/main".into(), oid: A.into() }],
            ..Default::default()
        };
        let input = format!(
            "list for-push\noption cas refs/heads/main:{A}\noption dry-run true\npush +refs/heads/x:refs/heads/main\npush refs/heads/y:refs/heads/bad\n\n\n"
        );
        let out = session(&input, &mut remote).await;
        assert!(
            out.ends_with("ok\nok\nok refs/heads/main forced update\nerror refs/heads/bad non-fast forward\n\n"),
            "{out}"
        );
        let request = &remote.pushed[0];
        assert_eq!(request.advertised, vec![RemoteRef { name: "refs/heads/main".into(), oid: A.into() }]);
        assert_eq!(request.options.leases, vec![Lease { dst: "refs/heads/main".into(), expected_oid: A.into() }]);
        assert!(request.options.dry_run);
        assert!(request.commands[0].force);
    }

    #[tokio::test]
    async fn unknown_options_are_unsupported_not_fatal() {
        let mut remote = FakeRemote::default();
        let out = session("option depth 1\noption filter blob:none\noption verbosity x\n\n", &mut remote).await;
        assert_eq!(out, "unsupported\nunsupported\nerror 'x' is not a number\n");
    }

    #[tokio::test]
    async fn garbage_ends_the_session_with_an_error() {
        let mut remote = FakeRemote::default();
        let err = run(format!("bogus {B}\n").as_bytes(), Vec::new(), &mut remote).await.unwrap_err();
        assert!(err.to_string().contains("unknown command"));
    }
}
