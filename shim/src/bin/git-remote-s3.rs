//! git-remote-s3: the git remote helper for s3:// URLs. git runs it as
//! `git-remote-s3 <remote> [<url>]` and talks to it on stdin/stdout; stdout belongs to git,
//! messages for people go to stderr. The work is done by the git-s3d daemon.

use std::process::ExitCode;

use git_s3_proto::endpoint::Endpoint;
use git_s3_shim::caller;
use git_s3_shim::daemon_backend::DaemonBackend;
use git_s3_shim::output;
use git_s3_shim::remote_helper::{self, HelperError};
use git_s3_shim::terminal::printable;
use tokio::io::BufReader;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (name, url) = match args.as_slice() {
        [_, name] => (name.clone(), name.clone()),
        [_, name, url] => (name.clone(), url.clone()),
        _ => {
            eprintln!("usage: git-remote-s3 <remote> [<url>] (git runs this for s3:// remotes)");
            return ExitCode::from(129);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("fatal: cannot start: {e}");
            return ExitCode::from(128);
        }
    };
    let result = runtime.block_on(async {
        let endpoint = Endpoint::from_process_env().map_err(|e| e.to_string())?;
        let mut backend = DaemonBackend::new(endpoint, caller::remote(&name, &url));
        remote_helper::run(BufReader::new(tokio::io::stdin()), tokio::io::stdout(), &mut backend).await.map_err(|e| {
            match e {
                // git went away: it has nothing more to hear.
                HelperError::Io(e) if e.kind() == std::io::ErrorKind::BrokenPipe => output::die_of_closed_pipe(),
                e => e.to_string(),
            }
        })
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("fatal: {}", printable(&message));
            ExitCode::from(128)
        }
    }
}
