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
    /// Branches, each 1–9 commits off a point of main.
    pub branches: usize,
    /// Branches carrying 20 or more commits of their own.
    pub long_branches: usize,
    /// Annotated tags on main, spread over its history.
    pub tags: usize,
    /// Annotated tags on the long branches' commits.
    pub branch_tags: usize,
    /// Bytes of new text each commit brings.
    pub bytes_per_commit: usize,
}

impl ProjectShape {
    /// Small enough for a story test, shaped like a project.
    pub const SMALL: ProjectShape =
        ProjectShape { commits: 120, branches: 8, long_branches: 0, tags: 300, branch_tags: 0, bytes_per_commit: 2048 };
    /// A real project's shape: ~3,000 commits and ~10 MB on main, 30 branches a few commits off
    /// it and 10 with 20+ of their own, 280 annotated tags on main and 20 on branches.
    pub const PROJECT: ProjectShape = ProjectShape {
        commits: 3000,
        branches: 30,
        long_branches: 10,
        tags: 280,
        branch_tags: 20,
        bytes_per_commit: 3400,
    };

    /// Refs of a project of this shape.
    pub fn refs(&self) -> usize {
        1 + self.branches + self.long_branches + self.tags + self.branch_tags
    }
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
        for step in 0..1 + b % 9 {
            let text = words(256 + step);
            parent = commit(&mut stream, &format!("refs/heads/topic-{b}"), Some(parent), 100 + b, &text);
        }
    }
    let mut branch_marks = Vec::new();
    for b in 0..shape.long_branches {
        let base = main_marks[main_marks.len() - 1 - (b * 61 + 20) % main_marks.len()];
        let mut parent = base;
        for step in 0..20 + b {
            let text = words(1024 + step);
            parent = commit(&mut stream, &format!("refs/heads/feature-{b}"), Some(parent), 200 + b % 5, &text);
            branch_marks.push(parent);
        }
    }
    for t in 0..shape.branch_tags.min(branch_marks.len()) {
        let target = branch_marks[t * branch_marks.len() / shape.branch_tags];
        let message = format!("feature preview {t}\n");
        write!(
            stream,
            "tag preview-{t}\nfrom :{target}\ntagger Dev <dev@example.com> {} +0000\ndata {}\n{message}\n",
            1_750_000_000 + t,
            message.len()
        )
        .unwrap();
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
