//! Installs `git s3`'s man pages where `man` finds them, so that `git s3 --help` (which git
//! turns into `man git-s3`) shows the manual, as it does for git-lfs. `cargo install` cannot
//! place man pages itself.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ManError {
    #[error("cannot tell where this program is ({0}); pass --dir")]
    NoProgramPath(std::io::Error),
    #[error("cannot write the man pages into {dir}: {source}")]
    Write { dir: PathBuf, source: std::io::Error },
}

/// The man folder beside the folder holding `program` (`~/.cargo/bin/git-s3` →
/// `~/.cargo/share/man`): with no MANPATH set, man-db and macOS's man search `../share/man` of
/// every folder on PATH, and this program's folder is on it for git to find the helpers.
pub fn default_man_dir(program: &Path) -> Option<PathBuf> {
    Some(program.parent()?.parent()?.join("share/man"))
}

/// Writes one page for `command` and one per subcommand (`git-s3.1`, `git-s3-ls.1`, …) into
/// `<man_dir>/man1`; returns the paths written.
pub fn install(mut command: clap::Command, man_dir: Option<PathBuf>) -> Result<Vec<PathBuf>, ManError> {
    let man_dir = match man_dir {
        Some(dir) => dir,
        None => {
            let program = std::env::current_exe().map_err(ManError::NoProgramPath)?;
            default_man_dir(&program).ok_or_else(|| ManError::NoProgramPath(std::io::ErrorKind::NotFound.into()))?
        }
    };
    let section = man_dir.join("man1");
    std::fs::create_dir_all(&section).map_err(|source| ManError::Write { dir: section.clone(), source })?;
    // Building names each subcommand's page after its parents (`git-s3-daemon-status`).
    command.build();
    let mut written = Vec::new();
    write_pages(command, &section, &mut written).map_err(|source| ManError::Write { dir: section.clone(), source })?;
    Ok(written)
}

fn write_pages(command: clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        write_pages(sub.clone(), dir, written)?;
    }
    written.push(clap_mangen::Man::new(command).generate_to(dir)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_go_to_share_man_beside_the_programs_folder() {
        assert_eq!(
            default_man_dir(Path::new("/home/me/.cargo/bin/git-s3")),
            Some(PathBuf::from("/home/me/.cargo/share/man"))
        );
        assert_eq!(default_man_dir(Path::new("/usr/local/bin/git-s3")), Some(PathBuf::from("/usr/local/share/man")));
    }
}
