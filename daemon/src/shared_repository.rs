//! git's `core.sharedRepository`: who may read and write what is added to a repository. The
//! daemon applies it to the files and folders it places (LFS objects) as git applies it to its
//! own objects (`git_config_perm` and `calc_shared_perm` in git's setup.c and path.c).

use std::path::Path;

/// What `core.sharedRepository` asks of new files and folders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// As the umask leaves them (unset, `false`, `umask`, `0`).
    Umask,
    /// These bits added (`group`, `true`, `1`: 0660; `all`, `world`, `everybody`, `2`: 0664).
    AtLeast(u32),
    /// Exactly these bits (an octal mode such as `0640`).
    Exactly(u32),
}

const GROUP: u32 = 0o660;
const EVERYBODY: u32 = 0o664;

#[derive(Debug, thiserror::Error)]
pub enum SharingError {
    #[error(
        "core.sharedRepository = '{0}' is not valid: the owner of files must always have read and write permissions"
    )]
    OwnerCannotReadAndWrite(String),
    #[error("core.sharedRepository = '{0}' is not valid: use umask, group, all or an octal mode such as 0640")]
    Unknown(String),
}

impl Sharing {
    /// Reads the setting's value as git does (`None`: not set).
    pub fn parse(value: Option<&str>) -> Result<Self, SharingError> {
        let Some(value) = value else { return Ok(Self::Umask) };
        match value {
            "umask" => return Ok(Self::Umask),
            "group" => return Ok(Self::AtLeast(GROUP)),
            "all" | "world" | "everybody" => return Ok(Self::AtLeast(EVERYBODY)),
            _ => {}
        }
        if let Ok(mode) = u32::from_str_radix(value, 8) {
            return match mode {
                0 => Ok(Self::Umask),
                1 => Ok(Self::AtLeast(GROUP)),
                2 => Ok(Self::AtLeast(EVERYBODY)),
                // Others never get write permission from it.
                mode if mode & 0o600 == 0o600 => Ok(Self::Exactly(mode & 0o666)),
                _ => Err(SharingError::OwnerCannotReadAndWrite(value.to_string())),
            };
        }
        match value.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" => Ok(Self::AtLeast(GROUP)),
            "false" | "no" | "off" | "" => Ok(Self::Umask),
            _ => Err(SharingError::Unknown(value.to_string())),
        }
    }

    /// The mode a file or folder created with `mode` (the umask applied) should have.
    pub fn mode_for(self, mode: u32, is_dir: bool) -> u32 {
        let tweak = match self {
            Self::Umask => return mode,
            Self::AtLeast(bits) | Self::Exactly(bits) => bits,
        };
        // A read-only file stays read-only; whoever may read an executable may run it.
        let mut tweak = if mode & 0o200 == 0 { tweak & !0o222 } else { tweak };
        if mode & 0o100 != 0 {
            tweak |= (tweak & 0o444) >> 2;
        }
        let mut shared = match self {
            Self::Exactly(_) => (mode & !0o777) | tweak,
            _ => mode | tweak,
        };
        if is_dir {
            // Whoever may read a folder may enter it, and new files in it keep its group.
            shared |= (shared & 0o444) >> 2;
            shared |= 0o2000;
        }
        shared
    }

    /// Gives `path` (just created) the mode this setting asks for.
    pub fn apply(self, path: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        if self == Self::Umask {
            return Ok(());
        }
        let metadata = std::fs::metadata(path)?;
        let mode = metadata.permissions().mode() & 0o7777;
        let shared = self.mode_for(mode, metadata.is_dir());
        if shared == mode {
            return Ok(());
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(shared))
    }

    /// Creates `dir` and any missing parents, each given the mode this setting asks for.
    pub fn create_dir_all(self, dir: &Path) -> std::io::Result<()> {
        let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
        for dir in missing.into_iter().rev() {
            match std::fs::create_dir(dir) {
                Ok(()) => self.apply(dir)?,
                // Another transfer made it first, and gave it its mode.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_read_as_git_reads_them() {
        for (value, sharing) in [
            (None, Sharing::Umask),
            (Some("umask"), Sharing::Umask),
            (Some("false"), Sharing::Umask),
            (Some("0"), Sharing::Umask),
            (Some("group"), Sharing::AtLeast(0o660)),
            (Some("true"), Sharing::AtLeast(0o660)),
            (Some("1"), Sharing::AtLeast(0o660)),
            (Some("all"), Sharing::AtLeast(0o664)),
            (Some("everybody"), Sharing::AtLeast(0o664)),
            (Some("2"), Sharing::AtLeast(0o664)),
            (Some("0640"), Sharing::Exactly(0o640)),
            (Some("0777"), Sharing::Exactly(0o666)),
        ] {
            assert_eq!(Sharing::parse(value).unwrap(), sharing, "{value:?}");
        }
        assert!(matches!(Sharing::parse(Some("0440")), Err(SharingError::OwnerCannotReadAndWrite(_))));
        assert!(matches!(Sharing::parse(Some("friends")), Err(SharingError::Unknown(_))));
    }

    #[test]
    fn modes_are_widened_or_set_as_git_does() {
        let group = Sharing::AtLeast(0o660);
        assert_eq!(group.mode_for(0o644, false), 0o664);
        assert_eq!(group.mode_for(0o600, false), 0o660);
        assert_eq!(group.mode_for(0o755, true), 0o2775);
        assert_eq!(Sharing::AtLeast(0o664).mode_for(0o600, false), 0o664);
        assert_eq!(Sharing::Exactly(0o640).mode_for(0o644, false), 0o640);
        assert_eq!(Sharing::Exactly(0o640).mode_for(0o700, true), 0o2750);
        assert_eq!(Sharing::Exactly(0o640).mode_for(0o444, false), 0o440, "read-only stays read-only");
        assert_eq!(Sharing::Umask.mode_for(0o644, false), 0o644);
    }

    #[test]
    fn created_folders_get_the_mode() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("objects/ab/cd");
        Sharing::Exactly(0o640).create_dir_all(&dir).unwrap();
        for made in [root.path().join("objects"), root.path().join("objects/ab"), dir] {
            assert_eq!(std::fs::metadata(&made).unwrap().permissions().mode() & 0o7777, 0o2750, "{}", made.display());
        }
    }
}
