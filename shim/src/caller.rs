//! Describes this process to the daemon, which acts exactly as if it ran here: same working
//! directory, same environment (git's variables for the helper, AWS settings, HOME, PATH).

use std::sync::OnceLock;

use git_s3_proto::{Caller, Remote};

/// One id per process, so the daemon can tell its clients apart.
fn session_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        format!("{}-{nanos:x}", std::process::id())
    })
}

pub fn caller() -> std::io::Result<Caller> {
    let cwd = std::env::current_dir()?;
    let env = std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))).collect();
    Ok(Caller { cwd: cwd.display().to_string(), env, session_id: session_id().to_string() })
}

pub fn remote(name: &str, url: &str) -> Remote {
    Remote { name: name.to_string(), url: url.to_string() }
}
