//! The gRPC service: turns requests into calls on a repository and errors into statuses. Thin
//! by design; the work lives in `repository` and below.

use std::sync::Arc;

use git_s3_proto as proto;
use proto::daemon_server::Daemon;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::git::Git;
use crate::lfs_endpoint::Operation;
use crate::lfs_sync::{self, SyncRequest};
use crate::listing_cache::ListingKey;
use crate::progress::{CANCELLED, Event, Events};
use crate::remote::{self, Naming, Remote, TRANSFER_ERROR_CODE};
use crate::state::DaemonState;
use crate::store::{self, ManageError, Repository, StoreError};
use crate::{lfs, requests};

pub struct Service {
    state: Arc<DaemonState>,
}

impl Service {
    pub fn new(state: Arc<DaemonState>) -> Self {
        Self { state }
    }

    async fn open(&self, caller: Option<proto::Caller>, remote: Option<proto::Remote>) -> Result<Opened, Status> {
        let session = caller.as_ref().map(|c| c.session_id.clone()).unwrap_or_default();
        let (context, remote) = requests::caller_and_remote(caller, remote)?;
        let remote = Remote::open(&self.state.clients, &self.state.scheduler, &context, &remote.name, &remote.url)
            .await
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let url = remote.config.url.to_string();
        let repo = store::open(&self.state.store, remote.clone()).await.map_err(|e| {
            self.state.record_error("open", &e.to_string());
            Status::aborted(e.to_string())
        })?;
        let label = format!("{url} ({})", repo.format());
        let listing_key = ListingKey { session, remote: url };
        Ok(Opened { repo, remote, label, listing_key })
    }
}

/// A repository opened for one request, with the names it goes by.
struct Opened {
    repo: Box<dyn Repository>,
    /// Where it lives, for what is not the repository's (LFS, the caller's git).
    remote: Remote,
    /// The remote as users write it and its format, for status and logs.
    label: String,
    listing_key: ListingKey,
}

type EventStream<T> = ReceiverStream<Result<T, Status>>;

#[tonic::async_trait]
impl Daemon for Service {
    async fn status(&self, request: Request<proto::StatusRequest>) -> Result<Response<proto::StatusReply>, Status> {
        let _ = request;
        let state = &self.state;
        let pack_cache = state.store.pack_cache();
        let (cache_packs, cache_bytes) = pack_cache.usage();
        let (pushed_bytes, fetched_bytes) = state.transferred_bytes();
        let activities = state
            .activities()
            .into_iter()
            .map(|a| proto::Activity {
                bytes: a.bytes.load(Ordering::Relaxed),
                what: a.what,
                remote: a.remote,
                elapsed_ms: a.started.elapsed().as_millis() as u64,
            })
            .collect();
        Ok(Response::new(proto::StatusReply {
            pid: std::process::id(),
            version: state.version.clone(),
            protocol: proto::PROTOCOL_VERSION,
            uptime_s: state.started.elapsed().as_secs(),
            socket: state.socket.display().to_string(),
            clients: state.clients.count().await as u32,
            // The asking connection is not a session.
            sessions: state.connections().saturating_sub(1) as u32,
            requests: state.requests(),
            idle_timeout_s: state.idle_timeout.map_or(0, |d| d.as_secs()),
            activities,
            listing_cache_hits: state.listings.hits(),
            listing_cache_misses: state.listings.misses(),
            recent_errors: state
                .recent_errors()
                .into_iter()
                .map(|e| proto::RecentError {
                    at_s: e.at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                    what: e.what,
                    message: e.message,
                })
                .collect(),
            transfer_requests: state.scheduler.requests_in_flight() as u32,
            max_transfer_requests: state.scheduler.max_requests() as u32,
            peak_transfer_requests: state.scheduler.peak_requests() as u32,
            max_inflight_bytes: state.scheduler.max_inflight_bytes(),
            maintenance: state
                .store
                .maintenance()
                .into_iter()
                .map(|m| proto::Maintenance {
                    remote: m.remote,
                    packs: m.packs as u64,
                    bytes: m.bytes,
                    did: m.did,
                    age_s: m.ended.map_or(0, |at| at.elapsed().as_secs()),
                    running: m.ended.is_none(),
                })
                .collect(),
            managed: state.managed,
            pushed_bytes,
            fetched_bytes,
            pack_cache_dir: pack_cache.dir().display().to_string(),
            pack_cache_packs: cache_packs as u32,
            pack_cache_bytes: cache_bytes,
            pack_cache_max_bytes: pack_cache.max_bytes(),
            bucket_regions: state
                .clients
                .found_regions()
                .into_iter()
                .map(|found| proto::BucketRegion {
                    bucket: found.bucket,
                    endpoint: found.endpoint,
                    region: found.region,
                    asked: found.asked,
                })
                .collect(),
        }))
    }

    async fn stop(&self, _request: Request<proto::StopRequest>) -> Result<Response<proto::StopReply>, Status> {
        tracing::info!("stop requested");
        self.state.shutdown.cancel();
        Ok(Response::new(proto::StopReply {}))
    }

    async fn list_refs(
        &self,
        request: Request<proto::ListRefsRequest>,
    ) -> Result<Response<proto::ListRefsReply>, Status> {
        let request = request.into_inner();
        let opened = self.open(request.caller, request.remote).await?;
        let what = if request.for_push { "list for-push" } else { "list" };
        let _activity = self.state.begin(what, &opened.label);
        let with_head = !request.for_push;
        let listing = match self.state.listings.get(&opened.listing_key, with_head) {
            Some(listing) => listing,
            None => {
                let listing = opened.repo.list(with_head).await.map_err(|e| {
                    self.state.record_error(what, &e.to_string());
                    Status::aborted(e.to_string())
                })?;
                self.state.listings.put(opened.listing_key, listing.clone(), with_head);
                listing
            }
        };
        let refs = listing.refs.into_iter().map(|(name, oid)| proto::RemoteRef { name, oid }).collect();
        let object_format = match listing.object_format {
            Some(format) => Some(format),
            None => opened.remote.git.object_format().await.ok(),
        };
        let object_format = object_format.map(|f| f.name().to_string()).unwrap_or_default();
        Ok(Response::new(proto::ListRefsReply {
            refs,
            head: listing.head.unwrap_or_default(),
            warnings: listing.warnings,
            object_format,
        }))
    }

    type FetchStream = EventStream<proto::FetchEvent>;

    async fn fetch(&self, request: Request<proto::FetchRequest>) -> Result<Response<Self::FetchStream>, Status> {
        let request = request.into_inner();
        let remote_name = request.remote.as_ref().map(|r| r.name.clone()).unwrap_or_default();
        let cloning = request.cloning;
        let progress = request.verbosity.is_some_and(|v| v.progress);
        let wanted = requests::fetch_wanted(request.wanted)?;
        let Opened { repo, remote, label, .. } = self.open(request.caller, request.remote).await?;
        let stream = stream_operation(
            self.state.clone(),
            "fetch",
            label,
            progress,
            move |events| async move {
                let fetched = events.unless_cancelled(repo.fetch(wanted, &events)).await?;
                let keeps = match fetched {
                    Ok(keeps) => keeps,
                    Err(e) => return Some(Err(e)),
                };
                if cloning {
                    let url = &remote.config.url;
                    if let Err(e) = lfs::configure_clone(
                        &remote.bucket,
                        &remote.layout,
                        &remote.git,
                        &remote_name,
                        &url.bucket,
                        &url.prefix,
                    )
                    .await
                    {
                        let hint = format!("run 'git-lfs-s3 install --remote {remote_name}' in the clone");
                        events
                            .message(format!("warning: could not set up git-lfs-s3 for this clone ({e}); {hint}"))
                            .await;
                    }
                }
                Some(Ok::<_, StoreError>(keeps))
            },
            fetch_event,
            |result| match result {
                None => Err(Status::cancelled(CANCELLED)),
                Some(Ok(keeps)) => Ok(proto::FetchEvent {
                    event: Some(proto::fetch_event::Event::Done(proto::FetchDone {
                        pack_locks: keeps.iter().map(|p| p.display().to_string()).collect(),
                    })),
                }),
                Some(Err(e)) => Err(Status::aborted(e.to_string())),
            },
        );
        Ok(Response::new(stream))
    }

    type PushStream = EventStream<proto::PushEvent>;

    async fn push(&self, request: Request<proto::PushRequest>) -> Result<Response<Self::PushStream>, Status> {
        let mut request = request.into_inner();
        let mut batch = requests::push_batch(&mut request)?;
        let Opened { repo, label, listing_key, .. } = self.open(request.caller, request.remote).await?;
        let state = self.state.clone();
        let progress = request.verbosity.is_some_and(|v| v.progress);
        // The remote's object format, as the session's `list for-push` saw it (git lists before
        // every push); listed afresh when it did not.
        let listing = match self.state.listings.get(&listing_key, false) {
            Some(listing) => listing,
            None => repo.list(false).await.map_err(|e| {
                self.state.record_error("push", &e.to_string());
                Status::aborted(e.to_string())
            })?,
        };
        batch.remote_format = listing.object_format;
        // What this session listed is about to change.
        self.state.listings.forget(&listing_key);
        let stream = stream_operation(
            self.state.clone(),
            "push",
            label,
            progress,
            move |events| async move {
                let outcomes = repo.push(batch, &events).await;
                for outcome in &outcomes {
                    if let Err(why) = &outcome.result {
                        state.record_error("push", &format!("{}: {why}", outcome.dst));
                    }
                }
                outcomes
            },
            push_event,
            |outcomes| {
                let statuses = outcomes
                    .into_iter()
                    .map(|o| match o.result {
                        Ok(pushed) => proto::RefStatus { dst: o.dst, error: String::new(), forced: pushed.forced },
                        Err(refusal) => proto::RefStatus { dst: o.dst, error: refusal.to_string(), forced: false },
                    })
                    .collect();
                Ok(proto::PushEvent { event: Some(proto::push_event::Event::Done(proto::PushDone { statuses })) })
            },
        );
        Ok(Response::new(stream))
    }

    type LfsSyncStream = EventStream<proto::LfsSyncEvent>;

    async fn lfs_sync(&self, request: Request<proto::LfsSyncRequest>) -> Result<Response<Self::LfsSyncStream>, Status> {
        let request = request.into_inner();
        let progress = request.verbosity.is_some_and(|v| v.progress);
        let caller = requests::caller_context(request.caller)?;
        let git = Git::new(caller.cwd.clone(), caller.env.clone());
        // Whatever the remote, bulk sync moves a repository's objects: without one there is nothing to ask S3 about.
        if git.run(&["rev-parse", "--git-dir"]).await.is_err() {
            let verb = if request.push { "push" } else { "pull" };
            return Err(Status::failed_precondition(format!(
                "not in a git repository; run 'git s3 lfs {verb}' inside the repository whose LFS objects should move"
            )));
        }
        let operation = if request.push { Operation::Upload } else { Operation::Download };
        let (store, config) = remote::open_lfs(
            &self.state.clients,
            &self.state.scheduler,
            &caller,
            &request.remote,
            operation,
            Naming::Argument,
        )
        .await
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let sync = SyncRequest {
            push: request.push,
            refs: request.refs,
            all: request.all,
            include: request.include,
            exclude: request.exclude,
            dry_run: request.dry_run,
        };
        let what = if sync.push { "lfs push" } else { "lfs pull" };
        let stream = stream_operation(
            self.state.clone(),
            what,
            config.url.to_string(),
            progress,
            move |events| async move { events.unless_cancelled(lfs_sync::sync(&store, &git, &sync, &events)).await },
            lfs_sync_event,
            |result| match result {
                None => Err(Status::cancelled(CANCELLED)),
                Some(Ok(outcome)) => Ok(proto::LfsSyncEvent {
                    event: Some(proto::lfs_sync_event::Event::Done(proto::LfsSyncDone {
                        objects: outcome.objects,
                        present: outcome.present,
                        moved: outcome.moved,
                        moved_bytes: outcome.moved_bytes,
                        elapsed_ms: outcome.elapsed.as_millis() as u64,
                        failures: outcome.failures,
                        would_move: outcome
                            .would_move
                            .iter()
                            .map(|p| format!("{} {} {}", p.oid, p.size, p.path))
                            .collect(),
                    })),
                }),
                Some(Err(e)) => Err(Status::aborted(e.to_string())),
            },
        );
        Ok(Response::new(stream))
    }

    type LfsStream = EventStream<proto::LfsEvent>;

    async fn lfs(&self, request: Request<Streaming<proto::LfsRequest>>) -> Result<Response<Self::LfsStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let state = self.state.clone();
        self.state.tasks.spawn(async move {
            if let Err(status) = serve_lfs(&state, &mut inbound, &tx).await {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn inspect(&self, request: Request<proto::InspectRequest>) -> Result<Response<proto::InspectReply>, Status> {
        let request = request.into_inner();
        let opened = self.open(request.caller, request.remote).await?;
        let _activity = self.state.begin("inspect", &opened.label);
        let inventory = opened.repo.inventory().await.map_err(|e| Status::aborted(e.to_string()))?;
        let refs = inventory
            .refs
            .into_iter()
            .map(|r| proto::RefInfo {
                name: r.name,
                bundles: r
                    .values
                    .into_iter()
                    .map(|v| proto::BundleInfo { oid: v.oid, size: v.size, age_s: v.age_s })
                    .collect(),
                protected: r.protected,
                lock_age_s: r.lock_age_s,
            })
            .collect();
        Ok(Response::new(proto::InspectReply {
            url: opened.remote.config.url.to_string(),
            refs,
            head: inventory.head.unwrap_or_default(),
            warnings: inventory.warnings,
            format: inventory.format.name().to_string(),
        }))
    }

    async fn set_protection(
        &self,
        request: Request<proto::SetProtectionRequest>,
    ) -> Result<Response<proto::SetProtectionReply>, Status> {
        let request = request.into_inner();
        let opened = self.open(request.caller, request.remote).await?;
        let _activity = self.state.begin(if request.protected { "protect" } else { "unprotect" }, &opened.label);
        let (refname, changed) =
            opened.repo.set_protection(&request.branch, request.protected).await.map_err(manage_status)?;
        Ok(Response::new(proto::SetProtectionReply { r#ref: refname, changed }))
    }

    async fn gc_grace(&self, request: Request<proto::GcGraceRequest>) -> Result<Response<proto::GcGraceReply>, Status> {
        let request = request.into_inner();
        let opened = self.open(request.caller, request.remote).await?;
        let _activity = self.state.begin("gc-grace", &opened.label);
        let (seconds, changed) = opened.repo.gc_grace(request.seconds).await.map_err(manage_status)?;
        Ok(Response::new(proto::GcGraceReply { seconds, changed }))
    }

    async fn delete_branch(
        &self,
        request: Request<proto::DeleteBranchRequest>,
    ) -> Result<Response<proto::DeleteBranchReply>, Status> {
        let request = request.into_inner();
        let opened = self.open(request.caller, request.remote).await?;
        let _activity = self.state.begin("delete-branch", &opened.label);
        self.state.listings.forget(&opened.listing_key);
        let (refname, new_head) =
            opened.repo.delete_branch(&request.branch, request.force).await.map_err(manage_status)?;
        Ok(Response::new(proto::DeleteBranchReply { r#ref: refname, new_head: new_head.unwrap_or_default() }))
    }

    async fn migrate(&self, request: Request<proto::MigrateRequest>) -> Result<Response<proto::MigrateReply>, Status> {
        let request = request.into_inner();
        let to = match request.to.as_str() {
            "bundles" => store::Format::Bundles,
            "native" => store::Format::Native,
            other => {
                return Err(Status::invalid_argument(format!(
                    "cannot migrate to '{other}'; use --to bundles or --to native"
                )));
            }
        };
        let opened = self.open(request.caller, request.remote).await?;
        let _activity = self.state.begin("migrate", &opened.label);
        self.state.listings.forget(&opened.listing_key);
        let migration = store::migrate(&self.state.store, opened.remote, to, request.dry_run).await.map_err(|e| {
            self.state.record_error("migrate", &e.to_string());
            Status::aborted(e.to_string())
        })?;
        Ok(Response::new(proto::MigrateReply {
            from: migration.from.name().to_string(),
            to: migration.to.name().to_string(),
            refs: migration.refs as u64,
            steps: migration.steps,
        }))
    }

    async fn doctor(&self, request: Request<proto::DoctorRequest>) -> Result<Response<proto::DoctorReply>, Status> {
        let request = request.into_inner();
        let opened = self.open(request.caller, request.remote).await?;
        let _activity = self.state.begin("doctor", &opened.label);
        let options = store::DoctorOptions {
            delete_bundles: request.delete_bundles,
            keep: request.keep,
            delete_stale_locks: request.delete_stale_locks,
            lock_ttl: (request.lock_ttl_s > 0).then(|| Duration::from_secs(request.lock_ttl_s)),
            upload_idle: request.upload_idle_s.map_or(store::DEFAULT_UPLOAD_IDLE, Duration::from_secs),
            dry_run: request.dry_run,
            thorough: request.thorough,
        };
        let findings = opened.repo.doctor(&options).await.map_err(|e| Status::aborted(e.to_string()))?;
        let findings = findings
            .into_iter()
            .map(|f| proto::Finding { subject: f.subject, problem: f.problem, action: f.action, fixed: f.fixed })
            .collect();
        Ok(Response::new(proto::DoctorReply { findings }))
    }
}

fn manage_status(e: ManageError) -> Status {
    match e {
        ManageError::BadName(..) => Status::invalid_argument(e.to_string()),
        ManageError::NoSuchRef(_)
        | ManageError::Protected(_)
        | ManageError::NativeOnly { .. }
        | ManageError::EmptyRemote => Status::failed_precondition(e.to_string()),
        _ => Status::aborted(e.to_string()),
    }
}

/// How often a running LFS transfer reports progress.
const LFS_PROGRESS_PERIOD: Duration = Duration::from_millis(100);

type LfsSender = mpsc::Sender<Result<proto::LfsEvent, Status>>;

async fn send_lfs(tx: &LfsSender, event: proto::lfs_event::Event) {
    let _ = tx.send(Ok(proto::LfsEvent { event: Some(event) })).await;
}

/// One agent process's session: `init`, then transfers one at a time. When the agent goes away
/// mid-transfer, the transfer is dropped, which aborts its multipart upload.
async fn serve_lfs(
    state: &Arc<DaemonState>,
    inbound: &mut Streaming<proto::LfsRequest>,
    tx: &LfsSender,
) -> Result<(), Status> {
    use proto::lfs_event::Event;
    use proto::lfs_request::Request as R;
    let Some(R::Init(init)) = inbound.message().await?.and_then(|m| m.request) else {
        return Err(Status::invalid_argument("an LFS session starts with init"));
    };
    let caller = requests::caller_context(init.caller)?;
    let operation = Operation::from_git_lfs(&init.operation);
    let opened =
        remote::open_lfs(&state.clients, &state.scheduler, &caller, &init.remote, operation, Naming::GitLfs).await;
    let (store, config) = match opened {
        Ok(opened) => opened,
        Err(e) => {
            send_lfs(tx, Event::Init(proto::LfsInitDone { error: e.to_string() })).await;
            return Ok(());
        }
    };
    send_lfs(tx, Event::Init(proto::LfsInitDone { error: String::new() })).await;
    let label = config.url.to_string();
    while let Some(message) = inbound.message().await? {
        let (upload, transfer) = match message.request {
            Some(R::Upload(t)) => (true, t),
            Some(R::Download(t)) => (false, t),
            _ => return Err(Status::invalid_argument("expected an upload or a download")),
        };
        let what = if upload { "lfs upload" } else { "lfs download" };
        let activity = state.begin(what, &format!("{label} {}", transfer.oid));
        let moved = activity.bytes();
        let work = async {
            requests::lfs_transfer(&transfer, upload)?;
            if upload {
                store
                    .upload(&transfer.oid, transfer.size, std::path::Path::new(&transfer.path), &moved)
                    .await
                    .map(|()| None)
            } else {
                store.download(&transfer.oid, transfer.size, &moved).await.map(Some)
            }
        };
        tokio::pin!(work);
        let mut ticker = tokio::time::interval(LFS_PROGRESS_PERIOD);
        let mut reported = 0;
        let result = loop {
            tokio::select! {
                result = &mut work => break result,
                _ = ticker.tick() => {
                    let now = moved.load(Ordering::Relaxed);
                    if now > reported {
                        send_lfs(tx, Event::Progress(proto::LfsProgress { oid: transfer.oid.clone(), bytes_so_far: now, bytes_since_last: now - reported })).await;
                        reported = now;
                    }
                }
                _ = tx.closed() => return Ok(()),
            }
        };
        let complete = match result {
            Ok(path) => {
                if reported < transfer.size {
                    let since = transfer.size - reported;
                    send_lfs(
                        tx,
                        Event::Progress(proto::LfsProgress {
                            oid: transfer.oid.clone(),
                            bytes_so_far: transfer.size,
                            bytes_since_last: since,
                        }),
                    )
                    .await;
                }
                let path = path.map(|p| p.display().to_string()).unwrap_or_default();
                proto::LfsComplete { oid: transfer.oid.clone(), path, error_code: 0, error_message: String::new() }
            }
            Err(e) => {
                tracing::warn!(oid = %transfer.oid, error = %e, "{what} failed");
                state.record_error(what, &format!("{}: {e}", transfer.oid));
                proto::LfsComplete {
                    oid: transfer.oid.clone(),
                    path: String::new(),
                    error_code: TRANSFER_ERROR_CODE,
                    error_message: e.to_string(),
                }
            }
        };
        send_lfs(tx, Event::Complete(complete)).await;
    }
    Ok(())
}

/// Runs an operation as a daemon task, streaming its events and then its result. When the client
/// goes away (Ctrl-C, a killed git) the operation is told (`Events::cancelled`) and decides how
/// to stop: a fetch or an LFS sync at once, a push before its point of no return or else once it
/// has finished. Either way it is awaited to its end here, so its cleanup runs.
fn stream_operation<T, R, Fut>(
    state: Arc<DaemonState>,
    what: &'static str,
    label: String,
    progress: bool,
    work: impl FnOnce(Events) -> Fut + Send + 'static,
    wrap: fn(Event) -> T,
    finish: fn(R) -> Result<T, Status>,
) -> EventStream<T>
where
    T: Send + 'static,
    R: Send + 'static,
    Fut: Future<Output = R> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(64);
    let tasks = state.tasks.clone();
    tasks.spawn(async move {
        let activity = state.begin(what, &label);
        let (events, mut event_rx) = Events::channel(activity.bytes(), progress);
        let work = work(events.clone());
        tokio::pin!(work);
        let result = loop {
            tokio::select! {
                result = &mut work => break result,
                Some(event) = event_rx.recv() => forward(&tx, event, wrap).await,
                () = tx.closed(), if !events.is_cancelled() => {
                    tracing::info!(what, remote = %label, "the client went away; stopping its work");
                    events.client_left();
                }
            }
        };
        while let Ok(event) = event_rx.try_recv() {
            forward(&tx, event, wrap).await;
        }
        let last = finish(result);
        if let Err(status) = &last {
            state.record_error(what, status.message());
        }
        let _ = tx.send(last).await;
    });
    ReceiverStream::new(rx)
}

async fn forward<T>(tx: &mpsc::Sender<Result<T, Status>>, event: Event, wrap: fn(Event) -> T) {
    let _ = tx.send(Ok(wrap(event))).await;
}

fn progress(event: Event) -> Result<proto::Progress, String> {
    match event {
        Event::Progress { title, done_bytes, total_bytes, done_objects, total_objects, finished } => {
            Ok(proto::Progress { title, done_bytes, total_bytes, finished, done_objects, total_objects })
        }
        Event::Message(text) => Err(text),
    }
}

fn fetch_event(event: Event) -> proto::FetchEvent {
    use proto::fetch_event::Event as E;
    let event = match progress(event) {
        Ok(p) => E::Progress(p),
        Err(text) => E::Message(text),
    };
    proto::FetchEvent { event: Some(event) }
}

fn lfs_sync_event(event: Event) -> proto::LfsSyncEvent {
    use proto::lfs_sync_event::Event as E;
    let event = match progress(event) {
        Ok(p) => E::Progress(p),
        Err(text) => E::Message(text),
    };
    proto::LfsSyncEvent { event: Some(event) }
}

fn push_event(event: Event) -> proto::PushEvent {
    use proto::push_event::Event as E;
    let event = match progress(event) {
        Ok(p) => E::Progress(p),
        Err(text) => E::Message(text),
    };
    proto::PushEvent { event: Some(event) }
}
