//! Where a fetch indexes what it downloads: a temporary object directory of its own inside the
//! repository's (so moving packs out of it is a rename), with the repository's objects as an
//! alternate so `index-pack --fix-thin` finds its delta bases, as git's receive-pack does. The
//! packs move into place only once the whole fetch succeeded; a failed or cancelled fetch takes
//! exactly its own files with it, whatever other git processes write beside it.

use std::path::{Path, PathBuf};

use crate::git::Git;

/// git itself names its quarantines `tmp_objdir-…`; `git gc` knows to leave them alone.
const QUARANTINE_PREFIX: &str = "tmp_objdir-git-remote-s3-";

pub struct Quarantine {
    dir: tempfile::TempDir,
    objects: PathBuf,
}

impl Quarantine {
    /// A new, empty quarantine inside `objects` (the repository's object directory).
    pub fn new(objects: &Path) -> std::io::Result<Self> {
        let dir = tempfile::Builder::new().prefix(QUARANTINE_PREFIX).tempdir_in(objects)?;
        std::fs::create_dir(dir.path().join("pack"))?;
        Ok(Self { dir, objects: objects.to_path_buf() })
    }

    /// Where index-pack writes the fetched packs.
    pub fn pack_dir(&self) -> PathBuf {
        self.dir.path().join("pack")
    }

    /// `git` writing its objects here and reading the repository's as well.
    pub fn git(&self, git: &Git) -> Git {
        git.with_object_directory(self.dir.path(), &self.objects)
    }

    /// Moves every fetched pack into the repository, each file of a pack in the order git
    /// itself migrates them (its `.keep` first, its `.idx`, which makes it visible, last), and
    /// returns where the `.keep` files `keeps` named are now.
    pub fn migrate(self, keeps: &[PathBuf]) -> std::io::Result<Vec<PathBuf>> {
        let target = self.objects.join("pack");
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(self.pack_dir())?.map(|entry| entry.map(|e| e.path())).collect::<Result<_, _>>()?;
        files.sort_by_key(|path| (migration_order(path), path.clone()));
        let mut moved_keeps = Vec::new();
        for file in &files {
            let Some(name) = file.file_name() else { continue };
            let destination = target.join(name);
            if let Err(e) = std::fs::rename(file, &destination) {
                // A partly moved fetch never reaches git: its keep files must not pin packs forever.
                for keep in &moved_keeps {
                    let _ = std::fs::remove_file(keep);
                }
                return Err(e);
            }
            if keeps.contains(file) {
                moved_keeps.push(destination);
            }
        }
        Ok(moved_keeps)
    }
}

/// git's `pack_copy_priority`: a pack is found through its `.idx`, so that comes last.
fn migration_order(path: &Path) -> u8 {
    match path.extension().and_then(|e| e.to_str()) {
        Some("keep") => 1,
        Some("pack") => 2,
        Some("rev") => 3,
        Some("idx") => 4,
        _ => 5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pack_becomes_visible_only_once_its_data_is_in_place() {
        let mut names = ["pack-a.idx", "pack-a.pack", "pack-a.keep", "pack-a.rev", "pack-a.promisor"];
        names.sort_by_key(|name| migration_order(Path::new(name)));
        assert_eq!(names, ["pack-a.keep", "pack-a.pack", "pack-a.rev", "pack-a.idx", "pack-a.promisor"]);
    }

    #[test]
    fn migration_moves_the_packs_and_a_dropped_quarantine_leaves_nothing() {
        let repo = tempfile::tempdir().expect("temp dir");
        let objects = repo.path().join("objects");
        std::fs::create_dir_all(objects.join("pack")).expect("pack dir");

        let quarantine = Quarantine::new(&objects).expect("quarantine");
        let keep = quarantine.pack_dir().join("pack-a.keep");
        for name in ["pack-a.pack", "pack-a.idx", "pack-a.keep"] {
            std::fs::write(quarantine.pack_dir().join(name), name).expect("write");
        }
        let keeps = quarantine.migrate(std::slice::from_ref(&keep)).expect("migrate");
        assert_eq!(keeps, [objects.join("pack/pack-a.keep")]);
        assert!(objects.join("pack/pack-a.idx").is_file());

        let failed = Quarantine::new(&objects).expect("quarantine");
        std::fs::write(failed.pack_dir().join("tmp_pack_x"), "half").expect("write");
        drop(failed);
        let left: Vec<_> =
            std::fs::read_dir(&objects).expect("objects").map(|e| e.expect("entry").file_name()).collect();
        assert_eq!(left, ["pack"], "only the repository's own pack dir remains");
    }
}
