//! git-lfs-s3: the git-lfs custom transfer agent for objects stored at `<prefix>/lfs/<oid>`,
//! and the commands that set it up. As an agent it speaks JSON lines with git-lfs on
//! stdin/stdout; the transfers are done by the git-s3d daemon.

use std::collections::BTreeSet;
use std::process::{Command, ExitCode};

use clap::{Parser, Subcommand};
use git_s3_proto::endpoint::Endpoint;
use git_s3_proto::url::{LFS_ALIAS_HOST, S3Url, lfs_alias_url, parse_lfs_alias};
use git_s3_shim::lfs_agent::{self, AgentError, DebugLog};
use git_s3_shim::{outln, output};
use tokio::io::BufReader;

const AGENT: &str = "git-lfs-s3";
/// Where the agent is told to use an S3 home for LFS objects (LFS-only mode).
const LFS_URL_KEY: &str = "s3.lfsurl";

#[derive(Parser)]
#[command(name = "git-lfs-s3", version, about = "git-lfs transfer agent storing LFS objects in S3")]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Use this agent for LFS in the current repository (or, with --global, for this user).
    Install {
        /// Only for this remote (which must be an s3:// remote); other remotes keep their LFS.
        #[arg(long, conflicts_with_all = ["url", "global"])]
        remote: Option<String>,
        /// Keep LFS objects at this S3 location while the code lives elsewhere.
        #[arg(long, conflicts_with = "global")]
        url: Option<String>,
        /// With --url: also write the repository's .lfsconfig (to commit), so clones by users
        /// who ran `install --global` get LFS content with no extra step.
        #[arg(long, requires = "url")]
        lfsconfig: bool,
        /// For this user: every repository whose .lfsconfig points into S3 uses this agent.
        #[arg(long)]
        global: bool,
    },
    /// Remove what `install` configured in this repository (with --global: what
    /// `install --global` configured for this user).
    Uninstall {
        /// Undo `install --global`: remove the agent from this user's git config.
        #[arg(long)]
        global: bool,
    },
    /// Log the agent's traffic to <git dir>/lfs/tmp/git-lfs-s3.log.
    EnableDebug,
    DisableDebug,
    /// Run as the agent with debug logging (what enable-debug configures git-lfs to run).
    Debug,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => run_agent(false),
        Some(Cmd::Debug) => run_agent(true),
        Some(Cmd::Install { global: true, .. }) => install_global(),
        Some(Cmd::Install { remote, url, lfsconfig, .. }) => {
            install(remote.as_deref(), url.as_deref()).and_then(|()| match (url, lfsconfig) {
                (Some(url), true) => write_lfsconfig(&url),
                _ => Ok(()),
            })
        }
        Some(Cmd::Uninstall { global }) => uninstall(if global { "--global" } else { "--local" }),
        Some(Cmd::EnableDebug) => {
            git(&["config", "--replace-all", &format!("lfs.customtransfer.{AGENT}.args"), "debug"])
                .map(|_| outln!("debug enabled: see {}", debug_log_path().unwrap_or_default()))
        }
        Some(Cmd::DisableDebug) => {
            let _ = git(&["config", "--unset-all", &format!("lfs.customtransfer.{AGENT}.args")]);
            outln!("debug disabled");
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run_agent(debug: bool) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let log = debug
        .then(debug_log_path)
        .flatten()
        .and_then(|path| std::fs::OpenOptions::new().create(true).append(true).open(path).ok());
    let mut log = DebugLog::new(log);
    runtime.block_on(async {
        let endpoint = Endpoint::from_process_env().map_err(|e| e.to_string())?;
        lfs_agent::run(BufReader::new(tokio::io::stdin()), tokio::io::stdout(), &endpoint, &mut log).await.map_err(
            |e| match e {
                // git-lfs went away: it has nothing more to hear.
                AgentError::Io(e) if e.kind() == std::io::ErrorKind::BrokenPipe => output::die_of_closed_pipe(),
                e => e.to_string(),
            },
        )
    })
}

fn debug_log_path() -> Option<String> {
    let git_dir = git(&["rev-parse", "--absolute-git-dir"]).ok()?;
    let dir = format!("{git_dir}/lfs/tmp");
    std::fs::create_dir_all(&dir).ok()?;
    Some(format!("{dir}/{AGENT}.log"))
}

fn install(remote: Option<&str>, url: Option<&str>) -> Result<(), String> {
    git(&["config", "--replace-all", &format!("lfs.customtransfer.{AGENT}.path"), AGENT])?;
    match (remote, url) {
        (Some(remote), _) => {
            let remote_url = git(&["remote", "get-url", "--", remote])
                .map_err(|_| format!("remote '{remote}' is not configured; add it first with: git remote add {remote} s3://<bucket>/<prefix>"))?;
            let parsed = S3Url::parse(&remote_url)
                .map_err(|e| format!("remote '{remote}' is not an s3:// remote ({e}); use --url for LFS-only mode"))?;
            let alias = lfs_alias_url(&parsed.bucket, &parsed.prefix);
            if let Ok(existing) = git(&["config", "--get", &format!("remote.{remote}.lfsurl")])
                && existing != alias
            {
                return Err(format!(
                    "remote.{remote}.lfsurl is already '{existing}'; unset it first: git config --unset remote.{remote}.lfsurl"
                ));
            }
            git(&["config", "--replace-all", &format!("remote.{remote}.lfsurl"), &alias])?;
            git(&["config", "--replace-all", &format!("lfs.{alias}.standalonetransferagent"), AGENT])?;
            outln!("{AGENT} installed for remote '{remote}' (LFS alias: {alias})");
        }
        (None, Some(url)) => {
            let parsed = S3Url::parse(url).map_err(|e| e.to_string())?;
            git(&["config", "--replace-all", LFS_URL_KEY, &parsed.to_string()])?;
            git(&["config", "--replace-all", "lfs.standalonetransferagent", AGENT])?;
            outln!("{AGENT} installed: LFS objects of this repository live at {parsed}");
        }
        (None, None) => {
            git(&["config", "--replace-all", "lfs.standalonetransferagent", AGENT])?;
            outln!("{AGENT} installed");
        }
    }
    Ok(())
}

/// `.lfsconfig` may name where LFS objects live (`lfs.url`) but never which agent moves them
/// (git-lfs ignores such keys there): it names the S3 location as an alias URL, and each user's
/// `install --global` maps every alias URL to this agent.
fn write_lfsconfig(url: &str) -> Result<(), String> {
    let parsed = S3Url::parse(url).map_err(|e| e.to_string())?;
    let top = git(&["rev-parse", "--show-toplevel"]).map_err(|e| format!("--lfsconfig needs a work tree: {e}"))?;
    let file = format!("{top}/.lfsconfig");
    let alias = lfs_alias_url(&parsed.bucket, &parsed.prefix);
    git(&["config", "--file", &file, "lfs.url", &alias])?;
    outln!("wrote {file} (lfs.url = {alias}); commit it: git add .lfsconfig && git commit");
    outln!("users who ran 'git-lfs-s3 install --global' then clone with LFS content and no extra step");
    Ok(())
}

fn install_global() -> Result<(), String> {
    let scoped = format!("lfs.https://{LFS_ALIAS_HOST}/.standalonetransferagent");
    git(&["config", "--global", "--replace-all", &format!("lfs.customtransfer.{AGENT}.path"), AGENT])?;
    git(&["config", "--global", "--replace-all", &scoped, AGENT])?;
    outln!("{AGENT} installed for this user: repositories whose .lfsconfig points into S3 use it");
    Ok(())
}

/// Removes what `install` wrote to one git config file (`--local` or `--global`): the agent's
/// command, `s3.lfsurl`, the standalone-agent settings naming this agent and the LFS alias URLs
/// (without the agent git-lfs would try to reach the alias host). Other agents' settings stay.
fn uninstall(scope: &str) -> Result<(), String> {
    let ours = config_entries(
        scope,
        "^(lfs\\..*standalonetransferagent|lfs\\.customtransfer\\.git-lfs-s3\\..*|s3\\.lfsurl|remote\\..*\\.lfsurl)$",
    )?
    .into_iter()
    .filter(|(key, value)| {
        if key.ends_with(".standalonetransferagent") {
            value == AGENT
        } else if key.starts_with("remote.") {
            parse_lfs_alias(value).is_some()
        } else {
            true
        }
    })
    .collect::<BTreeSet<_>>();
    for (key, value) in ours {
        git(&["config", scope, "--fixed-value", "--unset-all", &key, &value])?;
    }
    let whose = if scope == "--global" { " for this user" } else { "" };
    outln!("{AGENT} uninstalled{whose}");
    Ok(())
}

/// `(key, value)` of every entry of one git config file whose key matches `pattern`.
fn config_entries(scope: &str, pattern: &str) -> Result<Vec<(String, String)>, String> {
    let output = Command::new("git")
        .args(["config", scope, "--null", "--get-regexp", pattern])
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    // Exit 1: no key matches.
    if output.status.code() == Some(1) {
        return Ok(Vec::new());
    }
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).trim().to_string());
    }
    let listed = String::from_utf8_lossy(&output.stdout);
    Ok(listed
        .split('\0')
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let (key, value) = entry.split_once('\n').unwrap_or((entry, ""));
            (key.to_string(), value.to_string())
        })
        .collect())
}

/// Runs git here and returns its trimmed stdout, or its stderr as the error.
fn git(args: &[&str]) -> Result<String, String> {
    let output = Command::new("git").args(args).output().map_err(|e| format!("cannot run git: {e}"))?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).trim().to_string());
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}
