//! Files that make the daemon a user service: a systemd user unit with socket activation
//! (Linux) or a launchd agent (macOS). Pure text, so the content can be checked anywhere.

use std::path::{Path, PathBuf};

pub const SYSTEMD_SERVICE: &str = "git-s3d.service";
pub const SYSTEMD_SOCKET: &str = "git-s3d.socket";
pub const LAUNCHD_LABEL: &str = "io.github.git-remote-s3.daemon";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceFile {
    pub path: PathBuf,
    pub content: String,
}

/// The socket unit listens where clients look by default (`$XDG_RUNTIME_DIR/git-remote-s3/
/// daemon.sock`, systemd's `%t`), so the first git command starts the daemon; the service runs
/// it as managed (no idle exit).
pub fn systemd_units(config_home: &Path, daemon: &Path) -> Vec<ServiceFile> {
    let dir = config_home.join("systemd/user");
    let service = format!(
        "[Unit]\n\
         Description=git-remote-s3 daemon (S3 transfers for git and git-lfs)\n\
         Documentation=https://github.com/awslabs/git-remote-s3\n\
         Requires={SYSTEMD_SOCKET}\n\
         After={SYSTEMD_SOCKET}\n\
         \n\
         [Service]\n\
         Type=simple\n\
         ExecStart={} --managed\n\
         Restart=on-failure\n\
         \n\
         [Install]\n\
         WantedBy=default.target\n",
        daemon.display()
    );
    let socket = "[Unit]\n\
         Description=git-remote-s3 daemon socket\n\
         \n\
         [Socket]\n\
         ListenStream=%t/git-remote-s3/daemon.sock\n\
         SocketMode=0600\n\
         DirectoryMode=0700\n\
         \n\
         [Install]\n\
         WantedBy=sockets.target\n"
        .to_string();
    vec![
        ServiceFile { path: dir.join(SYSTEMD_SERVICE), content: service },
        ServiceFile { path: dir.join(SYSTEMD_SOCKET), content: socket },
    ]
}

pub fn launchd_plist(home: &Path, daemon: &Path) -> ServiceFile {
    let log = home.join("Library/Logs/git-s3d.log");
    let content = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
    <key>Label</key>
    <string>{LAUNCHD_LABEL}</string>
    <key>ProgramArguments</key>
    <array>
        <string>{}</string>
        <string>--managed</string>
    </array>
    <key>RunAtLoad</key>
    <true/>
    <key>KeepAlive</key>
    <true/>
    <key>StandardErrorPath</key>
    <string>{}</string>
</dict>
</plist>
"#,
        xml_escape(&daemon.display().to_string()),
        xml_escape(&log.display().to_string())
    );
    ServiceFile { path: home.join(format!("Library/LaunchAgents/{LAUNCHD_LABEL}.plist")), content }
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_units_activate_on_the_default_socket() {
        let units = systemd_units(Path::new("/home/u/.config"), Path::new("/usr/bin/git-s3d"));
        assert_eq!(units[0].path, Path::new("/home/u/.config/systemd/user/git-s3d.service"));
        assert!(units[0].content.contains("ExecStart=/usr/bin/git-s3d --managed"));
        assert!(units[1].content.contains("ListenStream=%t/git-remote-s3/daemon.sock"));
        assert!(units[1].content.contains("SocketMode=0600"));
    }

    #[test]
    fn plist_escapes_paths() {
        let plist = launchd_plist(Path::new("/Users/a&b"), Path::new("/opt/git-s3d"));
        assert!(plist.content.contains("<string>/Users/a&amp;b/Library/Logs/git-s3d.log</string>"));
        assert!(plist.path.ends_with("Library/LaunchAgents/io.github.git-remote-s3.daemon.plist"));
    }
}
