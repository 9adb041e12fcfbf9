//! The git-lfs transfer agent session: JSON requests from git-lfs on stdin are forwarded to the
//! daemon over one stream; its progress and completions go back to git-lfs on stdout. A failed
//! object is reported on that object and the session goes on.

use std::io::Write;

use git_s3_proto::endpoint::Endpoint;
use git_s3_proto::{LfsInit, LfsRequest, LfsTransfer, lfs_event, lfs_request};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::caller;
use crate::daemon_backend::describe;
use crate::daemon_client::connect_or_start;
use crate::lfs_protocol::{self, AgentRequest};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Protocol(#[from] lfs_protocol::ParseError),
    #[error("talking to git-lfs failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("git-lfs sent {0} before init")]
    NotInitialised(&'static str),
    #[error("{0}")]
    Daemon(String),
}

/// Where `debug` mode writes the protocol traffic.
pub struct DebugLog(Option<std::fs::File>);

impl DebugLog {
    pub fn new(file: Option<std::fs::File>) -> Self {
        Self(file)
    }

    fn line(&mut self, direction: &str, text: &str) {
        if let Some(file) = &mut self.0 {
            let _ = writeln!(file, "{} {direction} {text}", std::process::id());
        }
    }
}

struct Session {
    requests: mpsc::Sender<LfsRequest>,
    events: tonic::Streaming<git_s3_proto::LfsEvent>,
}

/// Serves git-lfs until it says `terminate` or closes stdin.
pub async fn run<R, W>(input: R, mut output: W, endpoint: &Endpoint, log: &mut DebugLog) -> Result<(), AgentError>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut lines = input.lines();
    let mut session: Option<Session> = None;
    while let Some(line) = lines.next_line().await? {
        log.line("<", &line);
        let replies = match lfs_protocol::parse_request(&line)? {
            AgentRequest::Init { operation, remote } => match open(endpoint, operation, remote).await {
                Ok(opened) => {
                    session = Some(opened);
                    vec![lfs_protocol::init_reply(None)]
                }
                Err(message) => vec![lfs_protocol::init_reply(Some(&message))],
            },
            AgentRequest::Upload { oid, size, path } => {
                let session = session.as_mut().ok_or(AgentError::NotInitialised("upload"))?;
                let transfer = LfsTransfer { oid: oid.clone(), size, path };
                transfer_one(session, lfs_request::Request::Upload(transfer), &oid, &mut output, log).await?
            }
            AgentRequest::Download { oid, size } => {
                let session = session.as_mut().ok_or(AgentError::NotInitialised("download"))?;
                let transfer = LfsTransfer { oid: oid.clone(), size, path: String::new() };
                transfer_one(session, lfs_request::Request::Download(transfer), &oid, &mut output, log).await?
            }
            AgentRequest::Terminate => break,
        };
        for reply in replies {
            write_line(&mut output, &reply, log).await?;
        }
    }
    Ok(())
}

async fn write_line<W: AsyncWrite + Unpin>(output: &mut W, line: &str, log: &mut DebugLog) -> std::io::Result<()> {
    log.line(">", line);
    output.write_all(line.as_bytes()).await?;
    output.write_all(b"\n").await?;
    output.flush().await
}

/// Opens the daemon stream and sends `init`; an error here is told to git-lfs, not fatal.
async fn open(endpoint: &Endpoint, operation: String, remote: String) -> Result<Session, String> {
    let mut client = connect_or_start(endpoint).await.map_err(|e| e.to_string())?;
    let (requests, rx) = mpsc::channel(4);
    let init = LfsInit { caller: Some(caller::caller().map_err(|e| e.to_string())?), remote, operation };
    requests.send(LfsRequest { request: Some(lfs_request::Request::Init(init)) }).await.map_err(|e| e.to_string())?;
    let mut events = client.lfs(ReceiverStream::new(rx)).await.map_err(|s| describe(&s, endpoint))?.into_inner();
    match events.message().await.map_err(|s| describe(&s, endpoint))?.and_then(|e| e.event) {
        Some(lfs_event::Event::Init(done)) if done.error.is_empty() => Ok(Session { requests, events }),
        Some(lfs_event::Event::Init(done)) => Err(done.error),
        _ => Err("git-s3d did not answer init".into()),
    }
}

/// Sends one transfer and relays its events until its completion. Progress lines are written
/// as they come; the completion is returned for the caller to write.
async fn transfer_one<W: AsyncWrite + Unpin>(
    session: &mut Session,
    request: lfs_request::Request,
    oid: &str,
    output: &mut W,
    log: &mut DebugLog,
) -> Result<Vec<String>, AgentError> {
    let lost = |why: String| AgentError::Daemon(format!("lost git-s3d during the transfer of {oid}: {why}"));
    session.requests.send(LfsRequest { request: Some(request) }).await.map_err(|e| lost(e.to_string()))?;
    loop {
        let event = session.events.message().await.map_err(|s| lost(s.message().to_string()))?;
        match event.and_then(|e| e.event) {
            Some(lfs_event::Event::Progress(p)) => {
                write_line(output, &lfs_protocol::progress(&p.oid, p.bytes_so_far, p.bytes_since_last), log).await?;
            }
            Some(lfs_event::Event::Complete(done)) if done.error_code == 0 => {
                let path = (!done.path.is_empty()).then_some(done.path.as_str());
                return Ok(vec![lfs_protocol::complete(&done.oid, path)]);
            }
            Some(lfs_event::Event::Complete(done)) => {
                return Ok(vec![lfs_protocol::failed(&done.oid, done.error_code, &done.error_message)]);
            }
            Some(lfs_event::Event::Init(_)) | None => return Err(lost("the stream ended".into())),
        }
    }
}
