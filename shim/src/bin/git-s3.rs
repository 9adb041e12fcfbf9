//! git-s3 (run as `git s3 …`): manage s3:// remotes and the git-s3d daemon. Every remote
//! argument is a remote name of the current repository or an s3:// URL.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use git_s3_proto::endpoint::Endpoint;
use git_s3_proto::{
    DeleteBranchRequest, DoctorRequest, GcGraceRequest, InspectRequest, LfsSyncEvent, LfsSyncRequest, MigrateRequest,
    Remote, SetProtectionRequest, StatusReply, StatusRequest, StopRequest, Verbosity,
};
use git_s3_shim::daemon_backend::describe;
use git_s3_shim::daemon_client::{self, Client, ConnectError};
use git_s3_shim::progress::{ProgressDisplay, human_bytes};
use git_s3_shim::terminal::printable;
use git_s3_shim::{caller, man_pages, out, outln, output, service};

/// Exit status of `daemon status` when no daemon runs (as `systemctl status` does).
const EXIT_NOT_RUNNING: u8 = 3;
const STOP_WAIT: Duration = Duration::from_secs(30);

#[derive(Parser)]
#[command(name = "git-s3", bin_name = "git s3", version, about = "Manage s3:// git remotes and the git-s3d daemon")]
struct Cli {
    #[command(subcommand)]
    command: TopCommand,
}

#[derive(Subcommand)]
enum TopCommand {
    /// List the remote's refs with their bundle sizes, ages, protection and locks.
    Ls { remote: String },
    /// Check the remote for leftovers of interrupted pushes and for bundles a clone would
    /// refuse, and repair what can be repaired.
    Doctor {
        remote: String,
        /// Delete extra bundles instead of keeping each as a branch <ref>_<sha8>.
        #[arg(long)]
        delete_bundle: bool,
        /// Where a ref has several bundles, keep this one (an object id or its prefix).
        #[arg(long, value_name = "SHA")]
        keep: Option<String>,
        /// Remove locks older than the lock TTL.
        #[arg(long)]
        delete_stale_locks: bool,
        /// When a lock counts as stale [default: the remote's TTL, 60]
        #[arg(long, value_name = "SECONDS")]
        lock_ttl: Option<u64>,
        /// Abort LFS uploads that added no part for this long [default: 3600]
        #[arg(long, value_name = "SECONDS")]
        upload_idle: Option<u64>,
        /// Report only; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Download and index every bundle (as a clone would) instead of checking its header.
        #[arg(long)]
        thorough: bool,
        /// Apply without asking.
        #[arg(long, short)]
        yes: bool,
    },
    /// Delete a branch on the remote.
    DeleteBranch {
        remote: String,
        branch: String,
        /// Delete without asking.
        #[arg(long, short)]
        yes: bool,
        /// Delete even a protected branch.
        #[arg(long)]
        force: bool,
    },
    /// Move the remote into the other storage format: `native` (history stored once, atomic
    /// pushes) or `bundles` (the layout the Python git-remote-s3 reads).
    Migrate {
        remote: String,
        /// The format to move into.
        #[arg(long, value_parser = ["native", "bundles"])]
        to: String,
        /// Say what would be done; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Show or set how long a native remote keeps packs it no longer names (replaced by a
    /// compaction, left by a killed push) before deleting them: fetches that started earlier
    /// still find them. Set from `git config s3.gcGraceSeconds` when the remote is created;
    /// 3600 by default.
    GcGrace {
        remote: String,
        /// The new grace period.
        seconds: Option<u64>,
    },
    /// Refuse force pushes and deletes of a branch.
    Protect { remote: String, branch: String },
    /// Allow force pushes and deletes of a branch again.
    Unprotect { remote: String, branch: String },
    /// Move a repository's LFS objects in bulk, many at once.
    #[command(subcommand)]
    Lfs(LfsCommand),
    /// The per-user daemon that does the S3 work.
    #[command(subcommand)]
    Daemon(DaemonCommand),
    /// Print shell completions.
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff), or install the pages where `man` and `git s3 --help` find them.
    Man {
        /// Write git-s3.1 and a page per subcommand into <DIR>/man1 [default: share/man beside
        /// the folder this program is in, e.g. ~/.cargo/share/man]
        #[arg(long)]
        install: bool,
        /// The man folder --install writes into, e.g. ~/.local/share/man.
        #[arg(long, requires = "install", value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum LfsCommand {
    /// Download the LFS objects the commits need that this repository lacks, then write them
    /// into the work tree.
    Pull(LfsSyncArgs),
    /// Upload the LFS objects the commits need that the bucket lacks.
    Push(LfsSyncArgs),
}

#[derive(clap::Args)]
struct LfsSyncArgs {
    /// A remote's name (its LFS objects found where git-lfs finds them) or an s3:// URL (used as
    /// it is, over any configured LFS location).
    #[arg(default_value = "origin")]
    remote: String,
    /// Commits whose trees' LFS objects move (not their history's: see --all) [default: HEAD]
    refs: Vec<String>,
    /// Every commit's LFS objects, the whole history of every ref.
    #[arg(long, conflicts_with = "refs")]
    all: bool,
    /// Only paths matching these patterns (comma-separated, as git-lfs takes them).
    #[arg(long, short = 'I')]
    include: Option<String>,
    /// Leave out paths matching these patterns.
    #[arg(long, short = 'X')]
    exclude: Option<String>,
    /// Say what would move; move nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Subcommand)]
enum DaemonCommand {
    /// Show whether the daemon runs and what it is doing (never starts it).
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Start the daemon if it is not running.
    Start,
    /// Ask the daemon to finish its work and exit.
    Stop,
    /// Stop the daemon and start a new one.
    Restart,
    /// Print the end of the daemon's log.
    Logs {
        #[arg(short = 'n', long, default_value_t = 50)]
        lines: usize,
        /// Keep printing what is added.
        #[arg(long, short)]
        follow: bool,
    },
    /// Run the daemon as a user service (systemd on Linux, launchd on macOS).
    InstallService {
        /// Show the files instead of writing them.
        #[arg(long)]
        print: bool,
        /// Which service manager [default: launchd on macOS, systemd elsewhere]
        #[arg(long, value_enum)]
        manager: Option<ServiceManager>,
    },
    /// Remove the user service.
    UninstallService,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ServiceManager {
    Systemd,
    Launchd,
}

impl ServiceManager {
    fn native() -> Self {
        if cfg!(target_os = "macos") { Self::Launchd } else { Self::Systemd }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return fatal(&format!("cannot start: {e}")),
    };
    let endpoint = match Endpoint::from_process_env() {
        Ok(endpoint) => endpoint,
        Err(e) => return fatal(&e.to_string()),
    };
    let result = runtime.block_on(run(cli.command, &endpoint));
    match result {
        Ok(code) => code,
        Err(message) => fatal(&message),
    }
}

fn fatal(message: &str) -> ExitCode {
    eprintln!("fatal: {}", printable(message));
    ExitCode::from(128)
}

async fn run(command: TopCommand, endpoint: &Endpoint) -> Result<ExitCode, String> {
    let ok = Ok(ExitCode::SUCCESS);
    match command {
        TopCommand::Daemon(command) => daemon(command, endpoint).await,
        TopCommand::Lfs(LfsCommand::Pull(args)) => lfs_sync(endpoint, args, false).await,
        TopCommand::Lfs(LfsCommand::Push(args)) => lfs_sync(endpoint, args, true).await,
        TopCommand::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "git-s3", &mut output::Stdout);
            ok
        }
        TopCommand::Man { install: false, .. } => {
            clap_mangen::Man::new(Cli::command()).render(&mut output::Stdout).map_err(|e| e.to_string())?;
            ok
        }
        TopCommand::Man { install: true, dir } => {
            let written = man_pages::install(Cli::command(), dir).map_err(|e| e.to_string())?;
            if let Some(folder) = written.first().and_then(|page| page.parent()) {
                outln!(
                    "wrote {} man pages to {}: 'git s3 --help' and 'man git-s3' show them",
                    written.len(),
                    folder.display()
                );
            }
            ok
        }
        TopCommand::Ls { remote } => {
            let mut client = connect(endpoint).await?;
            let request = InspectRequest { caller: Some(me()?), remote: Some(remote_arg(&remote)) };
            let reply = client.inspect(request).await.map_err(|s| describe(&s, endpoint))?.into_inner();
            print_listing(&reply);
            ok
        }
        TopCommand::Migrate { remote, to, dry_run } => {
            let mut client = connect(endpoint).await?;
            let request = MigrateRequest { caller: Some(me()?), remote: Some(remote_arg(&remote)), to, dry_run };
            let reply = client.migrate(request).await.map_err(|s| describe(&s, endpoint))?.into_inner();
            for step in &reply.steps {
                outln!("{}", printable(step));
            }
            if !dry_run && reply.from != reply.to {
                outln!("{} is now in the {} format ({} refs)", printable(&remote), printable(&reply.to), reply.refs);
            }
            ok
        }
        TopCommand::GcGrace { remote, seconds } => {
            let mut client = connect(endpoint).await?;
            let request = GcGraceRequest { caller: Some(me()?), remote: Some(remote_arg(&remote)), seconds };
            let reply = client.gc_grace(request).await.map_err(|s| describe(&s, endpoint))?.into_inner();
            match (seconds, reply.changed) {
                (None, _) => outln!("grace period: {}s", reply.seconds),
                (Some(_), true) => outln!("grace period set to {}s", reply.seconds),
                (Some(_), false) => outln!("grace period: {}s (already)", reply.seconds),
            }
            ok
        }
        TopCommand::Protect { remote, branch } => protect(endpoint, &remote, &branch, true).await,
        TopCommand::Unprotect { remote, branch } => protect(endpoint, &remote, &branch, false).await,
        TopCommand::DeleteBranch { remote, branch, yes, force } => {
            if !yes && !confirm(&format!("Delete branch '{branch}' on {remote}?"))? {
                outln!("nothing deleted");
                return Ok(ExitCode::FAILURE);
            }
            let mut client = connect(endpoint).await?;
            let request = DeleteBranchRequest { caller: Some(me()?), remote: Some(remote_arg(&remote)), branch, force };
            let reply = client.delete_branch(request).await.map_err(|s| describe(&s, endpoint))?.into_inner();
            outln!("deleted {}", printable(&reply.r#ref));
            if !reply.new_head.is_empty() {
                outln!("HEAD now points at {}", printable(&reply.new_head));
            }
            ok
        }
        TopCommand::Doctor {
            remote,
            delete_bundle,
            keep,
            delete_stale_locks,
            lock_ttl,
            upload_idle,
            dry_run,
            thorough,
            yes,
        } => {
            let mut client = connect(endpoint).await?;
            let request = |dry_run| -> Result<DoctorRequest, String> {
                Ok(DoctorRequest {
                    caller: Some(me()?),
                    remote: Some(remote_arg(&remote)),
                    delete_bundles: delete_bundle,
                    keep: keep.clone().unwrap_or_default(),
                    delete_stale_locks,
                    lock_ttl_s: lock_ttl.unwrap_or(0),
                    upload_idle_s: upload_idle,
                    dry_run,
                    thorough,
                })
            };
            // On a terminal, show what would change and ask first.
            let ask = !dry_run && !yes && std::io::stdin().is_terminal();
            let mut findings = client
                .doctor(request(dry_run || ask)?)
                .await
                .map_err(|s| describe(&s, endpoint))?
                .into_inner()
                .findings;
            if ask && findings.iter().any(|f| !f.action.is_empty() && !f.fixed) {
                print_findings(&findings);
                if !confirm("Apply these fixes?")? {
                    return Ok(ExitCode::FAILURE);
                }
                findings =
                    client.doctor(request(false)?).await.map_err(|s| describe(&s, endpoint))?.into_inner().findings;
            }
            print_findings(&findings);
            if findings.iter().all(|f| f.fixed) { ok } else { Ok(ExitCode::FAILURE) }
        }
    }
}

async fn protect(endpoint: &Endpoint, remote: &str, branch: &str, protected: bool) -> Result<ExitCode, String> {
    let mut client = connect(endpoint).await?;
    let request = SetProtectionRequest {
        caller: Some(me()?),
        remote: Some(remote_arg(remote)),
        branch: branch.to_string(),
        protected,
    };
    let reply = client.set_protection(request).await.map_err(|s| describe(&s, endpoint))?.into_inner();
    let state = if protected { "protected" } else { "not protected" };
    let already = if reply.changed { "" } else { " (already)" };
    outln!("{} is {state}{already}", printable(&reply.r#ref));
    Ok(ExitCode::SUCCESS)
}

async fn lfs_sync(endpoint: &Endpoint, args: LfsSyncArgs, push: bool) -> Result<ExitCode, String> {
    use git_s3_proto::lfs_sync_event::Event;
    let mut client = connect(endpoint).await?;
    let request = LfsSyncRequest {
        caller: Some(me()?),
        remote: args.remote.clone(),
        push,
        refs: args.refs,
        all: args.all,
        include: args.include.unwrap_or_default(),
        exclude: args.exclude.unwrap_or_default(),
        dry_run: args.dry_run,
        verbosity: Some(Verbosity { level: 1, progress: std::io::stderr().is_terminal() }),
    };
    let mut events = client.lfs_sync(request).await.map_err(|s| describe(&s, endpoint))?.into_inner();
    let mut display = ProgressDisplay::default();
    let done = loop {
        match events.message().await.map_err(|s| describe(&s, endpoint))? {
            Some(LfsSyncEvent { event: Some(Event::Progress(progress)) }) => display.update(&progress),
            Some(LfsSyncEvent { event: Some(Event::Message(text)) }) => eprintln!("{}", printable(&text)),
            Some(LfsSyncEvent { event: Some(Event::Done(done)) }) => break done,
            Some(LfsSyncEvent { event: None }) => {}
            None => return Err("git-s3d stopped before the transfer finished; run it again".into()),
        }
    };
    let (verb, already) = match (push, args.dry_run) {
        (false, false) => ("Downloaded", "already here"),
        (true, false) => ("Uploaded", "already in the bucket"),
        (false, true) => ("Would download", "already here"),
        (true, true) => ("Would upload", "already in the bucket"),
    };
    for line in &done.would_move {
        outln!("{}", printable(line));
    }
    let secs = done.elapsed_ms as f64 / 1000.0;
    let rate = if args.dry_run || done.moved == 0 {
        String::new()
    } else {
        format!(" in {secs:.1}s ({}/s)", human_bytes(done.moved_bytes as f64 / secs.max(0.001)))
    };
    outln!(
        "{verb} {} LFS objects ({}){rate}; {} {already}, {} in all",
        done.moved,
        human_bytes(done.moved_bytes as f64),
        done.present,
        done.objects
    );
    for failure in &done.failures {
        eprintln!("error: {}", printable(failure));
    }
    Ok(if done.failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn me() -> Result<git_s3_proto::Caller, String> {
    caller::caller().map_err(|e| format!("cannot read the working directory: {e}"))
}

/// A URL is used as is; a name is looked up by the daemon in this repository's config.
fn remote_arg(remote: &str) -> Remote {
    let url = if remote.contains("://") { remote.to_string() } else { String::new() };
    Remote { name: remote.to_string(), url }
}

async fn connect(endpoint: &Endpoint) -> Result<Client, String> {
    daemon_client::connect_or_start(endpoint).await.map_err(|e| e.to_string())
}

/// Asks on the terminal; without one, the answer is no (callers pass --yes to proceed).
fn confirm(question: &str) -> Result<bool, String> {
    if !std::io::stdin().is_terminal() {
        return Err(format!("{question} Not on a terminal: pass --yes to go ahead"));
    }
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer).map_err(|e| e.to_string())?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

fn print_listing(reply: &git_s3_proto::InspectReply) {
    outln!("{}", printable(&reply.url));
    outln!("format: {}", printable(&reply.format));
    for warning in &reply.warnings {
        eprintln!("warning: {}", printable(warning));
    }
    if reply.refs.is_empty() {
        outln!("(no refs)");
    }
    let names: Vec<_> = reply.refs.iter().map(|r| printable(&r.name)).collect();
    let width = names.iter().map(|name| name.chars().count()).max().unwrap_or(3).max(3);
    if !reply.refs.is_empty() {
        outln!("{:<width$}  {:<8}  {:>11}  {:>6}  NOTES", "REF", "OBJECT", "SIZE", "AGE");
    }
    for (r, name) in reply.refs.iter().zip(&names) {
        let mut notes = Vec::new();
        if r.protected {
            notes.push("protected".to_string());
        }
        if let Some(age) = r.lock_age_s {
            notes.push(format!("locked {}", human_age(age)));
        }
        if r.bundles.len() > 1 {
            notes.push(format!("{} bundles: run 'git s3 doctor'", r.bundles.len()));
        }
        // A native remote stores refs, not objects, per ref: its packs hold every ref's history.
        let per_ref = reply.format != "native";
        let (oid, size, age) = match r.bundles.first() {
            Some(b) if per_ref => {
                (printable(&b.oid).chars().take(8).collect::<String>(), human_bytes(b.size as f64), human_age(b.age_s))
            }
            Some(b) => (printable(&b.oid).chars().take(8).collect::<String>(), "-".into(), "-".into()),
            None => ("-".into(), "-".into(), "-".into()),
        };
        outln!("{name:<width$}  {oid:<8}  {size:>11}  {age:>6}  {}", notes.join(", "));
    }
    match reply.head.as_str() {
        "" => outln!("HEAD: (not set)"),
        head => outln!("HEAD -> {}", printable(head)),
    }
}

fn print_findings(findings: &[git_s3_proto::Finding]) {
    if findings.is_empty() {
        outln!("healthy: nothing to repair");
    }
    for f in findings {
        let action = if f.action.is_empty() { String::new() } else { format!(": {}", f.action) };
        outln!("{}", printable(&format!("{}: {}{action}", f.subject, f.problem)));
    }
}

fn human_age(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

async fn daemon(command: DaemonCommand, endpoint: &Endpoint) -> Result<ExitCode, String> {
    match command {
        DaemonCommand::Status { json } => match daemon_client::connect_existing(endpoint).await {
            Ok(mut client) => match client.status(StatusRequest {}).await {
                Ok(reply) => {
                    print_status(&reply.into_inner(), json);
                    Ok(ExitCode::SUCCESS)
                }
                // The connection broke (not an answer of the daemon's): it is going away.
                Err(status) if connection_broke(&status) => {
                    not_running(&endpoint.socket, json);
                    Ok(ExitCode::from(EXIT_NOT_RUNNING))
                }
                Err(status) => Err(status.message().to_string()),
            },
            Err(ConnectError::NotRunning(socket)) => {
                not_running(&socket, json);
                Ok(ExitCode::from(EXIT_NOT_RUNNING))
            }
            Err(e) => Err(e.to_string()),
        },
        DaemonCommand::Start => {
            let mut client = connect(endpoint).await?;
            let reply = client.status(StatusRequest {}).await.map_err(|s| s.message().to_string())?.into_inner();
            outln!("git-s3d {} is running (pid {}, socket {})", reply.version, reply.pid, reply.socket);
            Ok(ExitCode::SUCCESS)
        }
        DaemonCommand::Stop => {
            stop(endpoint).await?;
            Ok(ExitCode::SUCCESS)
        }
        DaemonCommand::Restart => {
            stop(endpoint).await?;
            Box::pin(daemon(DaemonCommand::Start, endpoint)).await
        }
        DaemonCommand::Logs { lines, follow } => logs(endpoint, lines, follow).await,
        DaemonCommand::InstallService { print, manager } => {
            install_service(print, manager.unwrap_or_else(ServiceManager::native))
        }
        DaemonCommand::UninstallService => uninstall_service(),
    }
}

/// Asks the daemon to stop and waits until its socket stops answering.
async fn stop(endpoint: &Endpoint) -> Result<(), String> {
    let mut client = match daemon_client::connect_existing(endpoint).await {
        Ok(client) => client,
        Err(ConnectError::NotRunning(socket)) => {
            outln!("git-s3d is not running (socket {})", socket.display());
            return Ok(());
        }
        Err(e) => return Err(e.to_string()),
    };
    client.stop(StopRequest {}).await.map_err(|s| s.message().to_string())?;
    drop(client);
    let deadline = std::time::Instant::now() + STOP_WAIT;
    while daemon_client::connect_existing(endpoint).await.is_ok() {
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "git-s3d did not stop within {}s; see {}",
                STOP_WAIT.as_secs(),
                endpoint.log_file().display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    daemon_client::wait_until_gone(endpoint).await.map_err(|e| e.to_string())?;
    outln!("git-s3d stopped");
    Ok(())
}

/// Whether a failed call failed in the transport (tonic reports those as Unavailable, or as
/// Unknown carrying the transport error) rather than with the daemon's own status.
fn connection_broke(status: &tonic::Status) -> bool {
    let from_transport = std::error::Error::source(status)
        .is_some_and(|source| source.downcast_ref::<tonic::transport::Error>().is_some());
    status.code() == tonic::Code::Unavailable || from_transport
}

fn not_running(socket: &std::path::Path, json: bool) {
    if json {
        outln!("{}", serde_json::json!({ "running": false, "socket": socket.display().to_string() }));
    } else {
        outln!("git-s3d is not running (socket {})", socket.display());
    }
}

async fn logs(endpoint: &Endpoint, lines: usize, follow: bool) -> Result<ExitCode, String> {
    let path = endpoint.log_file();
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let all: Vec<&str> = text.lines().collect();
    for line in &all[all.len().saturating_sub(lines)..] {
        outln!("{line}");
    }
    if !follow {
        return Ok(ExitCode::SUCCESS);
    }
    let mut shown = text.len();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.len() > shown {
            out!("{}", &text[shown..]);
            let _ = output::Stdout.flush();
        }
        shown = text.len();
    }
}

fn daemon_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("git-s3d")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("git-s3d"))
}

fn service_files(manager: ServiceManager) -> Result<Vec<service::ServiceFile>, String> {
    let dirs = directories::BaseDirs::new().ok_or("cannot find the home directory")?;
    let daemon = daemon_binary();
    Ok(match manager {
        ServiceManager::Launchd => vec![service::launchd_plist(dirs.home_dir(), &daemon)],
        ServiceManager::Systemd => service::systemd_units(dirs.config_dir(), &daemon),
    })
}

fn install_service(print: bool, manager: ServiceManager) -> Result<ExitCode, String> {
    let files = service_files(manager)?;
    for file in &files {
        if print {
            outln!("# {}\n{}", file.path.display(), file.content);
            continue;
        }
        if let Some(dir) = file.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        std::fs::write(&file.path, &file.content).map_err(|e| format!("cannot write {}: {e}", file.path.display()))?;
        outln!("wrote {}", file.path.display());
    }
    if print {
        return Ok(ExitCode::SUCCESS);
    }
    let enable: &[&[&str]] = match manager {
        ServiceManager::Launchd => &[&["launchctl", "load", "-w"]],
        ServiceManager::Systemd => &[
            &["systemctl", "--user", "daemon-reload"],
            &["systemctl", "--user", "enable", "--now", service::SYSTEMD_SOCKET],
        ],
    };
    for step in enable {
        let mut args: Vec<String> = step.iter().map(|s| s.to_string()).collect();
        if manager == ServiceManager::Launchd {
            args.push(files[0].path.display().to_string());
        }
        match Command::new(&args[0]).args(&args[1..]).status() {
            Ok(status) if status.success() => {}
            Ok(_) | Err(_) => {
                eprintln!("warning: '{}' did not succeed; enable the service yourself", args.join(" "));
                break;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn uninstall_service() -> Result<ExitCode, String> {
    let manager = ServiceManager::native();
    let files = service_files(manager)?;
    if manager == ServiceManager::Launchd {
        let _ = Command::new("launchctl").args(["unload", "-w"]).arg(&files[0].path).status();
    } else {
        let _ = Command::new("systemctl")
            .args(["--user", "disable", "--now", service::SYSTEMD_SOCKET, service::SYSTEMD_SERVICE])
            .status();
    }
    for file in files {
        match std::fs::remove_file(&file.path) {
            Ok(()) => outln!("removed {}", file.path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot remove {}: {e}", file.path.display())),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_status(status: &StatusReply, json: bool) {
    let activities: Vec<_> = status
        .activities
        .iter()
        .map(|a| {
            let rate = a.bytes as f64 / (a.elapsed_ms.max(1) as f64 / 1000.0);
            serde_json::json!({ "what": a.what, "remote": a.remote, "elapsed_ms": a.elapsed_ms, "bytes": a.bytes, "bytes_per_s": rate as u64 })
        })
        .collect();
    if json {
        let errors: Vec<_> = status
            .recent_errors
            .iter()
            .map(|e| serde_json::json!({ "at_s": e.at_s, "what": e.what, "message": e.message }))
            .collect();
        let value = serde_json::json!({
            "running": true,
            "pid": status.pid,
            "version": status.version,
            "protocol": status.protocol,
            "uptime_s": status.uptime_s,
            "socket": status.socket,
            "managed": status.managed,
            "clients": status.clients,
            "sessions": status.sessions,
            "requests": status.requests,
            "idle_timeout_s": status.idle_timeout_s,
            "activities": activities,
            "transfer_requests": {
                "in_flight": status.transfer_requests,
                "peak": status.peak_transfer_requests,
                "max": status.max_transfer_requests,
                "max_inflight_bytes": status.max_inflight_bytes,
            },
            "listing_cache": { "hits": status.listing_cache_hits, "misses": status.listing_cache_misses },
            "transferred": { "pushed_bytes": status.pushed_bytes, "fetched_bytes": status.fetched_bytes },
            "pack_cache": {
                "dir": status.pack_cache_dir,
                "packs": status.pack_cache_packs,
                "bytes": status.pack_cache_bytes,
                "max_bytes": status.pack_cache_max_bytes,
            },
            "bucket_regions": status.bucket_regions.iter().map(|r| serde_json::json!({
                "bucket": r.bucket, "endpoint": r.endpoint, "region": r.region, "asked": r.asked,
            })).collect::<Vec<_>>(),
            "recent_errors": errors,
            "maintenance": status.maintenance.iter().map(|m| serde_json::json!({
                "remote": m.remote, "packs": m.packs, "bytes": m.bytes, "did": m.did,
                "age_s": m.age_s, "running": m.running,
            })).collect::<Vec<_>>(),
        });
        outln!("{value}");
        return;
    }
    outln!("git-s3d {} (pid {}), up {}", status.version, status.pid, human_age(status.uptime_s));
    outln!("socket:     {}", status.socket);
    let exits = match (status.managed, status.idle_timeout_s) {
        (true, _) => "never (run by the service manager)".to_string(),
        (false, 0) => "never".to_string(),
        (false, secs) => format!("after {} idle", human_age(secs)),
    };
    outln!("exits:      {exits}");
    outln!("S3 clients: {}   sessions: {}   requests served: {}", status.clients, status.sessions, status.requests);
    let lookups = status.listing_cache_hits + status.listing_cache_misses;
    if lookups > 0 {
        outln!("ref listings from cache: {} of {lookups}", status.listing_cache_hits);
    }
    outln!(
        "S3 transfer requests in flight: {} of {} (peak {}), bodies in memory at most {}",
        status.transfer_requests,
        status.max_transfer_requests,
        status.peak_transfer_requests,
        human_bytes(status.max_inflight_bytes as f64)
    );
    outln!(
        "sent by pushes: {}   received by fetches: {}",
        human_bytes(status.pushed_bytes as f64),
        human_bytes(status.fetched_bytes as f64)
    );
    outln!(
        "pack cache: {} packs, {} of {} in {}",
        status.pack_cache_packs,
        human_bytes(status.pack_cache_bytes as f64),
        human_bytes(status.pack_cache_max_bytes as f64),
        status.pack_cache_dir
    );
    for found in &status.bucket_regions {
        let at = if found.endpoint.is_empty() { String::new() } else { format!(" at {}", found.endpoint) };
        outln!(
            "bucket region: {}{} is in {} (requests went to {} first)",
            printable(&found.bucket),
            printable(&at),
            printable(&found.region),
            printable(&found.asked)
        );
    }
    for m in &status.maintenance {
        let when = if m.running { "running now".to_string() } else { format!("{} ago", human_age(m.age_s)) };
        outln!(
            "native remote {}: {} packs, {}; last maintenance {when}: {}",
            printable(&m.remote),
            m.packs,
            human_bytes(m.bytes as f64),
            printable(&m.did)
        );
    }
    if status.activities.is_empty() {
        outln!("working on: nothing");
    } else {
        outln!("working on:");
        for a in &status.activities {
            let secs = a.elapsed_ms as f64 / 1000.0;
            if a.bytes > 0 {
                let rate = human_bytes(a.bytes as f64 / secs.max(0.001));
                outln!("  {} {} ({secs:.1}s, {}, {rate}/s)", a.what, printable(&a.remote), human_bytes(a.bytes as f64));
            } else {
                outln!("  {} {} ({secs:.1}s)", a.what, printable(&a.remote));
            }
        }
    }
    if !status.recent_errors.is_empty() {
        outln!("recent errors:");
        for e in &status.recent_errors {
            outln!("  {}: {}", e.what, printable(&e.message));
        }
    }
}
