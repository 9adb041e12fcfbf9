//! The remote helper's backend: forwards each batch to the daemon and shows its progress and
//! messages on stderr.

use git_s3_proto::endpoint::Endpoint;
use git_s3_proto::{
    FetchDone, FetchEvent, FetchRequest, ListRefsReply, ListRefsRequest, Progress, PushDone, PushEvent, Remote,
    RemoteRef, Verbosity, fetch_event, push_event,
};
use tonic::{Code, Status, Streaming};

use crate::caller;
use crate::daemon_client::{Client, connect_or_start};
use crate::progress::ProgressDisplay;
use crate::remote_helper::{Backend, Options, PushRequest};
use crate::terminal::printable;

pub struct DaemonBackend {
    endpoint: Endpoint,
    remote: Remote,
    client: Option<Client>,
    display: ProgressDisplay,
}

impl DaemonBackend {
    pub fn new(endpoint: Endpoint, remote: Remote) -> Self {
        Self { endpoint, remote, client: None, display: ProgressDisplay::default() }
    }

    /// Connects on first use: `capabilities` alone needs no daemon.
    async fn client(&mut self) -> Result<Client, String> {
        if let Some(client) = &self.client {
            return Ok(client.clone());
        }
        let client = connect_or_start(&self.endpoint).await.map_err(|e| e.to_string())?;
        self.client = Some(client.clone());
        Ok(client)
    }

    /// Shows an operation's progress and messages until its result arrives. `cut_short` is what
    /// to tell the user when the stream ends without one.
    async fn relay<E: OperationEvent>(
        &mut self,
        mut events: Streaming<E>,
        verbosity: &Verbosity,
        cut_short: &str,
    ) -> Result<E::Done, String> {
        loop {
            let event = events.message().await.map_err(|s| describe(&s, &self.endpoint))?;
            match event.and_then(OperationEvent::step) {
                Some(Step::Progress(progress)) if verbosity.progress => self.display.update(&progress),
                Some(Step::Message(message)) if verbosity.level > 0 => eprintln!("{}", printable(&message)),
                Some(Step::Progress(_) | Step::Message(_)) => {}
                Some(Step::Done(done)) => return Ok(done),
                None => return Err(cut_short.to_string()),
            }
        }
    }
}

/// What one event of a streamed operation means to the client.
enum Step<D> {
    Progress(Progress),
    Message(String),
    Done(D),
}

trait OperationEvent {
    type Done;
    /// `None` when the event carries nothing (an empty oneof), which ends the relay like the
    /// stream ending would.
    fn step(self) -> Option<Step<Self::Done>>;
}

impl OperationEvent for FetchEvent {
    type Done = FetchDone;
    fn step(self) -> Option<Step<FetchDone>> {
        Some(match self.event? {
            fetch_event::Event::Progress(p) => Step::Progress(p),
            fetch_event::Event::Message(m) => Step::Message(m),
            fetch_event::Event::Done(done) => Step::Done(done),
        })
    }
}

impl OperationEvent for PushEvent {
    type Done = PushDone;
    fn step(self) -> Option<Step<PushDone>> {
        Some(match self.event? {
            push_event::Event::Progress(p) => Step::Progress(p),
            push_event::Event::Message(m) => Step::Message(m),
            push_event::Event::Done(done) => Step::Done(done),
        })
    }
}

/// One line for the user: the daemon's own words, or what went wrong reaching it.
pub fn describe(status: &Status, endpoint: &Endpoint) -> String {
    match status.code() {
        Code::InvalidArgument | Code::FailedPrecondition | Code::Aborted if !status.message().is_empty() => {
            status.message().to_string()
        }
        _ => format!("lost the connection to git-s3d ({}); see {}", status.message(), endpoint.log_file().display()),
    }
}

impl Backend for DaemonBackend {
    async fn list(&mut self, for_push: bool) -> Result<ListRefsReply, String> {
        let mut client = self.client().await?;
        let request = ListRefsRequest {
            caller: Some(caller::caller().map_err(|e| e.to_string())?),
            remote: Some(self.remote.clone()),
            for_push,
        };
        let reply =
            client.list_refs(request).await.map(|r| r.into_inner()).map_err(|s| describe(&s, &self.endpoint))?;
        for warning in &reply.warnings {
            eprintln!("warning: {}", printable(warning));
        }
        Ok(reply)
    }

    async fn fetch(&mut self, wanted: Vec<RemoteRef>, options: &Options) -> Result<FetchDone, String> {
        let mut client = self.client().await?;
        let verbosity = options.verbosity();
        let request = FetchRequest {
            caller: Some(caller::caller().map_err(|e| e.to_string())?),
            remote: Some(self.remote.clone()),
            wanted,
            verbosity: Some(verbosity),
            cloning: options.cloning,
        };
        let events = client.fetch(request).await.map_err(|s| describe(&s, &self.endpoint))?.into_inner();
        self.relay(events, &verbosity, "git-s3d stopped before the fetch finished; fetch again").await
    }

    async fn push(&mut self, request: PushRequest) -> Result<PushDone, String> {
        let mut client = self.client().await?;
        let verbosity = request.options.verbosity();
        let request = git_s3_proto::PushRequest {
            caller: Some(caller::caller().map_err(|e| e.to_string())?),
            remote: Some(self.remote.clone()),
            commands: request.commands,
            advertised: request.advertised,
            leases: request.options.leases,
            dry_run: request.options.dry_run,
            atomic: request.options.atomic,
            verbosity: Some(verbosity),
        };
        let events = client.push(request).await.map_err(|s| describe(&s, &self.endpoint))?.into_inner();
        let cut_short =
            "git-s3d stopped before the push finished; check the remote with 'git ls-remote' and push again";
        self.relay(events, &verbosity, cut_short).await
    }
}
