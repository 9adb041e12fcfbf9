//! Runs the `git` binary for git's own work (rev-parse, bundles, index-pack), always inside the
//! caller's environment and working directory, as if the caller had run it.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::object_format::ObjectFormat;

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("cannot run git: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("git {command} failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("git {command} printed something unexpected: {output}")]
    Unexpected { command: String, output: String },
}

/// Variables that point git at a particular repository; cleared when we run git on a
/// repository of our own making.
const REPOSITORY_VARS: &[&str] = &[
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
    "GIT_QUARANTINE_PATH",
];

/// git, run in one caller's repository.
#[derive(Debug, Clone)]
pub struct Git {
    cwd: PathBuf,
    env: Arc<HashMap<String, String>>,
    git_dir: Option<PathBuf>,
}

impl Git {
    pub fn new(cwd: PathBuf, env: Arc<HashMap<String, String>>) -> Self {
        Self { cwd, env, git_dir: None }
    }

    /// The same git, pointed at another repository (one we created), with the caller's
    /// repository variables removed.
    pub fn for_repository(&self, git_dir: &Path) -> Self {
        let mut env = (*self.env).clone();
        for var in REPOSITORY_VARS {
            env.remove(*var);
        }
        Self { cwd: self.cwd.clone(), env: Arc::new(env), git_dir: Some(git_dir.to_path_buf()) }
    }

    /// A git for a repository of our own at `git_dir`, run there: it needs nothing of the
    /// caller's working directory, which may be gone by the time background work runs.
    pub fn detached(&self, git_dir: &Path) -> Self {
        Self { cwd: git_dir.to_path_buf(), ..self.for_repository(git_dir) }
    }

    /// The same git, writing new objects to `objects` and reading `alternate`'s (and those of
    /// any alternates the caller named) too.
    pub fn with_object_directory(&self, objects: &Path, alternate: &Path) -> Self {
        let mut env = (*self.env).clone();
        let mut alternates = alternate.display().to_string();
        if let Some(more) = env.get("GIT_ALTERNATE_OBJECT_DIRECTORIES").filter(|v| !v.is_empty()) {
            alternates = format!("{alternates}:{more}");
        }
        env.insert("GIT_OBJECT_DIRECTORY".into(), objects.display().to_string());
        env.insert("GIT_ALTERNATE_OBJECT_DIRECTORIES".into(), alternates);
        env.insert("GIT_QUARANTINE_PATH".into(), objects.display().to_string());
        Self { cwd: self.cwd.clone(), env: Arc::new(env), git_dir: self.git_dir.clone() }
    }

    /// Every directory this git finds packs in: the repository's and its alternates' named in
    /// the environment.
    pub async fn pack_dirs(&self) -> Result<Vec<PathBuf>, GitError> {
        let mut dirs = vec![self.git_path("objects/pack").await?];
        if let Some(alternates) = self.env.get("GIT_ALTERNATE_OBJECT_DIRECTORIES") {
            dirs.extend(alternates.split(':').filter(|dir| !dir.is_empty()).map(|dir| Path::new(dir).join("pack")));
        }
        Ok(dirs)
    }

    pub fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut command = Command::new("git");
        command.env_clear().envs(self.env.iter()).current_dir(&self.cwd).kill_on_drop(true);
        if let Some(git_dir) = &self.git_dir {
            command.env("GIT_DIR", git_dir);
        }
        command.args(args).stdin(Stdio::null());
        command
    }

    /// Runs git and returns its stdout as bytes, or its stderr as the error.
    pub async fn run_bytes(&self, args: &[&str]) -> Result<Vec<u8>, GitError> {
        let output =
            self.command(args).stdout(Stdio::piped()).stderr(Stdio::piped()).output().await.map_err(GitError::Spawn)?;
        if !output.status.success() {
            return Err(GitError::Failed { command: args.join(" "), stderr: last_line(&output.stderr) });
        }
        Ok(output.stdout)
    }

    /// Runs git and returns its trimmed stdout, or its stderr as the error.
    pub async fn run(&self, args: &[&str]) -> Result<String, GitError> {
        let stdout = self.run_bytes(args).await?;
        Ok(String::from_utf8_lossy(&stdout).trim_end().to_string())
    }

    /// Runs git with `input` on its stdin and returns its stdout, or its stderr as the error.
    pub async fn run_with_input(&self, args: &[&str], input: &[u8]) -> Result<Vec<u8>, GitError> {
        self.run_with_input_into(args, input, Stdio::piped()).await
    }

    /// Runs git with `input` on its stdin and its stdout written to the file `out` (a pack, say).
    pub async fn run_with_input_to_file(&self, args: &[&str], input: &[u8], out: &Path) -> Result<(), GitError> {
        let file = std::fs::File::create(out).map_err(GitError::Spawn)?;
        self.run_with_input_into(args, input, Stdio::from(file)).await.map(drop)
    }

    async fn run_with_input_into(&self, args: &[&str], input: &[u8], stdout: Stdio) -> Result<Vec<u8>, GitError> {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .map_err(GitError::Spawn)?;
        let mut stdin = child.stdin.take().ok_or_else(|| GitError::Spawn(std::io::Error::other("no stdin")))?;
        let input = input.to_vec();
        let feed = async move {
            stdin.write_all(&input).await?;
            stdin.shutdown().await
        };
        let (fed, output) = tokio::join!(feed, child.wait_with_output());
        let output = output.map_err(GitError::Spawn)?;
        if !output.status.success() {
            return Err(GitError::Failed { command: args.join(" "), stderr: last_line(&output.stderr) });
        }
        fed.map_err(GitError::Spawn)?;
        Ok(output.stdout)
    }

    /// A new, empty bare repository of `object_format` in the empty directory `dir`, and a git
    /// detached into it (`detached`).
    pub async fn scratch_repository(&self, dir: &Path, object_format: &str) -> Result<Git, GitError> {
        let git = self.detached(dir);
        let object_format = format!("--object-format={object_format}");
        git.run(&["init", "--quiet", "--bare", "--template=", &object_format, "."]).await?;
        Ok(git)
    }

    /// Runs git for its exit status alone (a question such as "is this an ancestor?").
    pub async fn succeeds(&self, args: &[&str]) -> Result<bool, GitError> {
        let status =
            self.command(args).stdout(Stdio::null()).stderr(Stdio::null()).status().await.map_err(GitError::Spawn)?;
        Ok(status.success())
    }

    /// The object id `rev` names, or `None` when it names nothing.
    pub async fn resolve(&self, rev: &str) -> Result<Option<String>, GitError> {
        match self.run(&["rev-parse", "--verify", "--quiet", &format!("{rev}^{{object}}")]).await {
            Ok(oid) => Ok(Some(oid)),
            Err(GitError::Failed { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The object each of `revs` names (`None`: nothing), in order, from one `git cat-file`.
    pub async fn resolve_all(&self, revs: &[&str]) -> Result<Vec<Option<String>>, GitError> {
        if revs.is_empty() {
            return Ok(Vec::new());
        }
        let input: String = revs.iter().map(|rev| format!("{rev}\n")).collect();
        let output = self.run_with_input(&["cat-file", "--batch-check=%(objectname)"], input.as_bytes()).await?;
        let stdout = String::from_utf8_lossy(&output);
        let answers: Vec<Option<String>> =
            stdout.lines().map(|line| ObjectFormat::of_hex(line).map(|_| line.to_string())).collect();
        if answers.len() != revs.len() {
            return Err(GitError::Unexpected {
                command: "cat-file --batch-check".into(),
                output: format!("{} answers to {} questions", answers.len(), revs.len()),
            });
        }
        Ok(answers)
    }

    /// `git update-ref --stdin` of `commands` (`update <ref> <oid>` lines), all at once.
    pub async fn update_refs(&self, commands: &str) -> Result<(), GitError> {
        self.run_with_input(&["update-ref", "--stdin"], commands.as_bytes()).await.map(drop)
    }

    pub async fn has_object(&self, oid: &str) -> Result<bool, GitError> {
        self.succeeds(&["cat-file", "-e", oid]).await
    }

    /// Which of `oids` this repository has (one `git cat-file --batch-check` for all of them).
    pub async fn present(&self, oids: &[&str]) -> Result<HashSet<String>, GitError> {
        if oids.is_empty() {
            return Ok(HashSet::new());
        }
        let input: String = oids.iter().map(|oid| format!("{oid}\n")).collect();
        let output = self.run_with_input(&["cat-file", "--batch-check=%(objectname)"], input.as_bytes()).await?;
        // Missing objects print "<name> missing"; present ones their full name alone.
        Ok(String::from_utf8_lossy(&output)
            .lines()
            .filter(|line| !line.ends_with(" missing"))
            .map(str::to_string)
            .collect())
    }

    /// The object ids a pack index lists (`git show-index`).
    pub async fn index_object_ids(&self, index: &Path) -> Result<Vec<String>, GitError> {
        let input = std::fs::File::open(index).map_err(GitError::Spawn)?;
        let output = self
            .command(["show-index"])
            .stdin(Stdio::from(input))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .await
            .map_err(GitError::Spawn)?;
        if !output.status.success() {
            return Err(GitError::Failed { command: "show-index".into(), stderr: last_line(&output.stderr) });
        }
        // "<offset> <object id> (<crc>)" per object.
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|line| {
                line.split(' ').nth(1).map(str::to_string).ok_or_else(|| GitError::Unexpected {
                    command: "show-index".into(),
                    output: line.chars().take(80).collect(),
                })
            })
            .collect()
    }

    pub async fn is_ancestor(&self, ancestor: &str, descendant: &str) -> Result<bool, GitError> {
        self.succeeds(&["merge-base", "--is-ancestor", ancestor, descendant]).await
    }

    /// The object format of the repository.
    pub async fn object_format(&self) -> Result<ObjectFormat, GitError> {
        let name = self.run(&["rev-parse", "--show-object-format"]).await?;
        ObjectFormat::from_name(&name)
            .ok_or_else(|| GitError::Unexpected { command: "rev-parse --show-object-format".into(), output: name })
    }

    /// An absolute path inside the repository, e.g. `objects` or `objects/pack`.
    pub async fn git_path(&self, path: &str) -> Result<PathBuf, GitError> {
        let out = self.run(&["rev-parse", "--path-format=absolute", "--git-path", path]).await?;
        Ok(PathBuf::from(out))
    }

    /// `git config --list`, as (lower-cased key, value) pairs; none when git cannot read any.
    pub async fn config_list(&self) -> Result<Vec<(String, String)>, GitError> {
        match self.run_bytes(&["config", "--null", "--list"]).await {
            Ok(raw) => Ok(parse_config_list(&raw)),
            Err(GitError::Failed { .. }) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }
}

fn parse_config_list(raw: &[u8]) -> Vec<(String, String)> {
    raw.split(|&b| b == 0)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let text = String::from_utf8_lossy(entry);
            match text.split_once('\n') {
                Some((key, value)) => (key.to_ascii_lowercase(), value.to_string()),
                None => (text.to_ascii_lowercase(), "true".to_string()),
            }
        })
        .collect()
}

/// The last non-empty line of git's stderr: git puts the reason there.
pub fn last_line(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("(no message)")
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_list_parses_values_and_bare_keys() {
        let raw = b"s3.endpoint\nhttp://127.0.0.1:9000\0Remote.Origin.S3PathStyle\ntrue\0core.bare\0";
        assert_eq!(
            parse_config_list(raw),
            vec![
                ("s3.endpoint".into(), "http://127.0.0.1:9000".into()),
                ("remote.origin.s3pathstyle".into(), "true".into()),
                ("core.bare".into(), "true".into()),
            ]
        );
    }

    #[test]
    fn last_line_of_stderr() {
        assert_eq!(last_line(b"warning: x\nfatal: bad object\n\n"), "fatal: bad object");
        assert_eq!(last_line(b""), "(no message)");
    }
}
