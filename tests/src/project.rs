//! Repositories shaped like real projects: a long main line, branches a few commits off it and
//! many annotated tags, written at once with `git fast-import`.

use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;

use crate::TestEnv;

/// The shape of a generated project.
#[derive(Debug, Clone, Copy)]
pub struct ProjectShape {
    /// Commits on main.
    pub commits: usize,
    /// Branches, each two commits off a point of main.
    pub branches: usize,
    /// Annotated tags on main, spread over its history.
    pub tags: usize,
    /// Bytes of new text each commit brings.
    pub bytes_per_commit: usize,
}

impl ProjectShape {
    /// Small enough for a story test, shaped like a project.
    pub const SMALL: ProjectShape = ProjectShape { commits: 120, branches: 8, tags: 300, bytes_per_commit: 2048 };
    /// A real project's shape: ~3,000 commits and ~10 MB on main, 30 branches, 300 tags.
    pub const PROJECT: ProjectShape = ProjectShape { commits: 3000, branches: 30, tags: 300, bytes_per_commit: 3400 };
}

/// A new repository `name` holding a project of `shape`, checked out on main.
pub fn project_repository(env: &TestEnv, name: &str, shape: ProjectShape) -> PathBuf {
    let work = env.path(name);
    std::fs::create_dir_all(&work).expect("project dir");
    env.git_ok(&work, &["init", "-q"]);
    let mut stream = Vec::new();
    let mut mark = 0usize;
    let mut main_marks = Vec::new();
    let mut files: Vec<String> = vec![String::new(); 40];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut words = |n: usize| -> String {
        let mut text = String::with_capacity(n + 16);
        while text.len() < n {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            text.push_str(&format!("{:x} ", seed % 0xffff_ffff));
            if text.len() % 64 < 9 {
                text.push('\n');
            }
        }
        text.push('\n');
        text
    };
    let mut commit = |stream: &mut Vec<u8>, refname: &str, parent: Option<usize>, file: usize, text: &str| {
        mark += 1;
        let blob = mark;
        write!(stream, "blob\nmark :{blob}\ndata {}\n{text}\n", text.len()).unwrap();
        mark += 1;
        let message = format!("change {mark} to file-{file}\n");
        write!(
            stream,
            "commit {refname}\nmark :{mark}\ncommitter Dev <dev@example.com> {} +0000\ndata {}\n{message}",
            1_600_000_000 + mark,
            message.len()
        )
        .unwrap();
        if let Some(parent) = parent {
            writeln!(stream, "from :{parent}").unwrap();
        }
        writeln!(stream, "M 100644 :{blob} file-{file}.txt\n").unwrap();
        mark
    };
    for i in 0..shape.commits {
        let file = i % files.len();
        let added = words(shape.bytes_per_commit);
        files[file].push_str(&added);
        let text = files[file].clone();
        let parent = main_marks.last().copied();
        main_marks.push(commit(&mut stream, "refs/heads/main", parent, file, &text));
    }
    for b in 0..shape.branches {
        let base = main_marks[main_marks.len() - 1 - (b * 7) % main_marks.len()];
        let mut parent = base;
        for step in 0..2 {
            let text = words(256 + step);
            parent = commit(&mut stream, &format!("refs/heads/topic-{b}"), Some(parent), 100 + b, &text);
        }
    }
    for t in 0..shape.tags {
        let target = main_marks[t * main_marks.len() / shape.tags.max(1)];
        let message = format!("release {t}\n");
        write!(
            stream,
            "tag v1.{t}\nfrom :{target}\ntagger Dev <dev@example.com> {} +0000\ndata {}\n{message}\n",
            1_700_000_000 + t,
            message.len()
        )
        .unwrap();
    }
    let mut import = env.command("git");
    import.args(["fast-import", "--quiet"]).current_dir(&work).stdin(Stdio::piped());
    let mut child = import.spawn().expect("spawn git fast-import");
    child.stdin.take().expect("stdin").write_all(&stream).expect("feed git fast-import");
    assert!(child.wait().expect("git fast-import").success(), "git fast-import failed");
    env.git_ok(&work, &["reset", "-q", "--hard", "main"]);
    work
}
