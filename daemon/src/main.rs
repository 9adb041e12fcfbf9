//! git-s3d: the per-user daemon. Usually started on demand by the shims; see README.md.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use git_s3_proto::endpoint::{Endpoint, SOCKET_ENV};
use git_s3d::daemon::{self, DaemonError, DaemonOptions};
use tracing_subscriber::EnvFilter;

/// Sets the log filter (tracing's syntax, e.g. `debug` or `git_s3d=trace`).
const LOG_ENV: &str = "GIT_REMOTE_S3_LOG";

#[derive(Parser)]
#[command(name = "git-s3d", version, about = "The per-user daemon behind git-remote-s3, git-lfs-s3 and git-s3")]
struct Args {
    /// Socket to listen on [default: $XDG_RUNTIME_DIR/git-remote-s3/daemon.sock]
    #[arg(long, env = SOCKET_ENV)]
    socket: Option<std::path::PathBuf>,
    /// Exit after this many seconds without clients or work; 0 never exits on its own.
    #[arg(long, env = "GIT_REMOTE_S3_DAEMON_IDLE_SECONDS", default_value_t = 600)]
    idle_timeout: u64,
    /// Run under a service manager (systemd, launchd): never exit when idle. Implied when
    /// systemd passes the listening socket.
    #[arg(long)]
    managed: bool,
    /// Leave the caller's session (used when a client starts the daemon).
    #[arg(long)]
    detach: bool,
    /// Most S3 requests of all transfers together.
    #[arg(long, env = "GIT_REMOTE_S3_MAX_REQUESTS", default_value_t = git_s3d::scheduler::DEFAULT_MAX_REQUESTS)]
    max_requests: usize,
    /// Most MiB carried by transfers in flight at once.
    #[arg(long, env = "GIT_REMOTE_S3_MAX_INFLIGHT_MIB", default_value_t = git_s3d::scheduler::DEFAULT_MAX_INFLIGHT_BYTES / (1024 * 1024))]
    max_inflight_mib: u64,
    /// Most MiB the cache of packs (for composed pushes) keeps on disk.
    #[arg(long, env = "GIT_REMOTE_S3_PACK_CACHE_MIB", default_value_t = git_s3d::store::DEFAULT_PACK_CACHE_BYTES / (1024 * 1024))]
    pack_cache_mib: u64,
    /// Report another version in the handshake (for testing upgrades).
    #[arg(long, hide = true)]
    report_version: Option<String>,
}

/// A bare level ("debug") is about this program, not the HTTP/2 frames of its libraries;
/// anything else is a full tracing filter.
fn log_filter(setting: Option<&str>) -> EnvFilter {
    let directives = match setting.map(str::trim).filter(|s| !s.is_empty()) {
        None => "info".to_string(),
        Some(level) if !level.contains(['=', ',']) => format!("warn,git_s3d={level}"),
        Some(full) => full.to_string(),
    };
    EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Before any thread exists: taking the systemd socket clears variables from the environment.
    let inherited = match daemon::inherited_listener() {
        Ok(inherited) => inherited,
        Err(e) => {
            eprintln!("git-s3d: cannot use the socket passed by the service manager: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("git-s3d: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(serve(args, inherited));
    // Work still running on blocking threads has been given its drain time already.
    runtime.shutdown_timeout(Duration::from_millis(100));
    code
}

async fn serve(args: Args, inherited: Option<std::os::unix::net::UnixListener>) -> ExitCode {
    if args.detach {
        // Own session: no controlling terminal, not killed with the shell that started git.
        let _ = rustix::process::setsid();
    }
    tracing_subscriber::fmt()
        .with_env_filter(log_filter(std::env::var(LOG_ENV).ok().as_deref()))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();

    let endpoint = match Endpoint::resolve(|key| match key {
        SOCKET_ENV => args.socket.as_ref().map(|p| p.display().to_string()),
        _ => std::env::var(key).ok(),
    }) {
        Ok(endpoint) => endpoint,
        Err(e) => {
            eprintln!("git-s3d: {e}");
            return ExitCode::FAILURE;
        }
    };
    let options = DaemonOptions {
        endpoint: endpoint.clone(),
        idle_timeout: (args.idle_timeout > 0).then(|| Duration::from_secs(args.idle_timeout)),
        version: args.report_version.unwrap_or_else(|| git_s3_proto::BUILD_VERSION.to_string()),
        max_requests: args.max_requests,
        max_inflight_bytes: args.max_inflight_mib.saturating_mul(1024 * 1024),
        managed: args.managed,
        cache_dir: endpoint.cache_dir.clone(),
        pack_cache_bytes: args.pack_cache_mib.saturating_mul(1024 * 1024),
        inherited,
    };
    match daemon::run(options).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(DaemonError::AlreadyRunning(socket)) => {
            eprintln!("git-s3d: another daemon already serves {}", socket.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("git-s3d: {e}");
            ExitCode::FAILURE
        }
    }
}
