//! git-s3 (run as `git s3 …`): manage s3:// remotes and the git-s3d daemon.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use git_s3_proto::endpoint::Endpoint;
use git_s3_proto::{StatusReply, StatusRequest, StopRequest};
use git_s3_shim::daemon_client::{self, ConnectError};

/// Exit status of `daemon status` when no daemon runs (as `systemctl status` does).
const EXIT_NOT_RUNNING: u8 = 3;

#[derive(Parser)]
#[command(name = "git s3", version, about = "Manage s3:// git remotes and the git-s3d daemon")]
struct Cli {
    #[command(subcommand)]
    command: TopCommand,
}

#[derive(Subcommand)]
enum TopCommand {
    /// The per-user daemon that does the S3 work.
    #[command(subcommand)]
    Daemon(DaemonCommand),
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("fatal: cannot start: {e}");
            return ExitCode::from(128);
        }
    };
    runtime.block_on(async {
        let endpoint = match Endpoint::from_process_env() {
            Ok(endpoint) => endpoint,
            Err(e) => {
                eprintln!("fatal: {e}");
                return ExitCode::from(128);
            }
        };
        match cli.command {
            TopCommand::Daemon(command) => daemon(command, &endpoint).await,
        }
    })
}

async fn daemon(command: DaemonCommand, endpoint: &Endpoint) -> ExitCode {
    let result = match command {
        DaemonCommand::Status { json } => match daemon_client::connect_existing(endpoint).await {
            Ok(mut client) => match client.status(StatusRequest {}).await {
                Ok(reply) => {
                    print_status(&reply.into_inner(), json);
                    Ok(())
                }
                Err(status) => Err(status.message().to_string()),
            },
            Err(ConnectError::NotRunning(socket)) => {
                if json {
                    println!("{}", serde_json::json!({ "running": false, "socket": socket.display().to_string() }));
                } else {
                    println!("git-s3d is not running (socket {})", socket.display());
                }
                return ExitCode::from(EXIT_NOT_RUNNING);
            }
            Err(e) => Err(e.to_string()),
        },
        DaemonCommand::Start => match daemon_client::connect_or_start(endpoint).await {
            Ok(mut client) => match client.status(StatusRequest {}).await {
                Ok(reply) => {
                    let reply = reply.into_inner();
                    println!("git-s3d {} is running (pid {}, socket {})", reply.version, reply.pid, reply.socket);
                    Ok(())
                }
                Err(status) => Err(status.message().to_string()),
            },
            Err(e) => Err(e.to_string()),
        },
        DaemonCommand::Stop => match daemon_client::connect_existing(endpoint).await {
            Ok(mut client) => client
                .stop(StopRequest {})
                .await
                .map(|_| println!("git-s3d is stopping"))
                .map_err(|s| s.message().to_string()),
            Err(ConnectError::NotRunning(socket)) => {
                println!("git-s3d is not running (socket {})", socket.display());
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("fatal: {message}");
            ExitCode::from(128)
        }
    }
}

fn print_status(status: &StatusReply, json: bool) {
    if json {
        let activities: Vec<_> = status
            .activities
            .iter()
            .map(|a| serde_json::json!({ "what": a.what, "remote": a.remote, "elapsed_ms": a.elapsed_ms }))
            .collect();
        let value = serde_json::json!({
            "running": true,
            "pid": status.pid,
            "version": status.version,
            "protocol": status.protocol,
            "uptime_s": status.uptime_s,
            "socket": status.socket,
            "clients": status.clients,
            "sessions": status.sessions,
            "requests": status.requests,
            "idle_timeout_s": status.idle_timeout_s,
            "activities": activities,
            "listing_cache": { "hits": status.listing_cache_hits, "misses": status.listing_cache_misses },
        });
        println!("{value}");
        return;
    }
    println!("git-s3d {} (pid {}), up {}", status.version, status.pid, human_duration(status.uptime_s));
    println!("socket:     {}", status.socket);
    let idle = if status.idle_timeout_s == 0 {
        "never (managed)".to_string()
    } else {
        format!("after {} idle", human_duration(status.idle_timeout_s))
    };
    println!("exits:      {idle}");
    println!("S3 clients: {}   sessions: {}   requests served: {}", status.clients, status.sessions, status.requests);
    if status.activities.is_empty() {
        println!("working on: nothing");
    } else {
        println!("working on:");
        for a in &status.activities {
            println!("  {} {} ({:.1}s)", a.what, a.remote, a.elapsed_ms as f64 / 1000.0);
        }
    }
}

fn human_duration(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m {}s", secs / 60, secs % 60),
        _ => format!("{}h {}m", secs / 3600, (secs % 3600) / 60),
    }
}
