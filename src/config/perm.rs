//! Who may change the config. The daemon runs as root with eBPF and network
//! privileges and does what the file says (which traffic to drop, where to send
//! flow records), so a file that someone other than root or the user running
//! inferlane could rewrite is refused, as sshd's StrictModes refuses a writable
//! authorized_keys.
//!
//! The check is made on the open file (`fstat`), and the text is read from the
//! same descriptor, so the file checked is the file read.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;

/// Group- and other-write bits.
const WRITABLE_BY_OTHERS: u32 = 0o022;

/// Why a config file is not trusted; the message completes `FILE: `.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Untrusted(pub String);

/// Refuses a file that is writable by its group or by others, or owned by anyone
/// but root or `euid`.
pub fn check(mode: u32, owner: u32, euid: u32, file: &str) -> Result<(), Untrusted> {
    let mode = mode & 0o7777;
    if mode & WRITABLE_BY_OTHERS != 0 {
        let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
            (true, true) => "its group and by others",
            (true, false) => "its group",
            _ => "others",
        };
        return Err(Untrusted(format!(
            "is writable by {who} (mode {mode:04o}); the daemon runs privileged and does what the file says: \
             run `chmod go-w {file}`"
        )));
    }
    if owner != 0 && owner != euid {
        let running = if euid == 0 { "root".to_string() } else { format!("root or uid {euid}, which runs inferlane") };
        return Err(Untrusted(format!(
            "is owned by uid {owner}, not by {running}; the daemon runs privileged and does what the file says: \
             run `chown root {file}`"
        )));
    }
    Ok(())
}

/// Opens `path`, checks its owner and mode, and reads it.
pub fn read_trusted(path: &std::path::Path) -> Result<String, ReadError> {
    let mut file = File::open(path).map_err(ReadError::Io)?;
    let meta = file.metadata().map_err(ReadError::Io)?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    check(meta.mode(), meta.uid(), euid, &path.display().to_string()).map_err(ReadError::Untrusted)?;
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(ReadError::Io)?;
    Ok(text)
}

#[derive(Debug)]
pub enum ReadError {
    Io(std::io::Error),
    Untrusted(Untrusted),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_only_writes_pass() {
        for mode in [0o600, 0o644, 0o640, 0o400, 0o444, 0o100644, 0o700, 0o755] {
            assert_eq!(check(mode, 0, 0, "f"), Ok(()), "mode {mode:o} owned by root");
            assert_eq!(check(mode, 1000, 1000, "f"), Ok(()), "mode {mode:o} owned by the running user");
            assert_eq!(check(mode, 0, 1000, "f"), Ok(()), "mode {mode:o} owned by root, run by uid 1000");
        }
    }

    #[test]
    fn group_or_other_write_is_refused_and_named() {
        let cases = [
            (0o666, "its group and by others (mode 0666)"),
            (0o100666, "its group and by others (mode 0666)"),
            (0o646, "others (mode 0646)"),
            (0o602, "others (mode 0602)"),
            (0o664, "its group (mode 0664)"),
            (0o620, "its group (mode 0620)"),
            (0o1777, "its group and by others (mode 1777)"),
        ];
        for (mode, expected) in cases {
            let Err(Untrusted(message)) = check(mode, 0, 0, "/etc/x.toml") else {
                panic!("mode {mode:o} must be refused");
            };
            assert!(
                message.starts_with(&format!("is writable by {expected}")),
                "mode {mode:o}: expected \"is writable by {expected}...\", saw {message:?}"
            );
            assert!(message.contains("chmod go-w /etc/x.toml"), "{message}");
        }
    }

    #[test]
    fn a_foreign_owner_is_refused() {
        let Err(Untrusted(message)) = check(0o644, 1000, 0, "c.toml") else { panic!("uid 1000's file, run by root") };
        assert!(message.starts_with("is owned by uid 1000, not by root;"), "{message}");
        let Err(Untrusted(message)) = check(0o600, 1001, 1000, "c.toml") else { panic!("uid 1001's file, run by 1000") };
        assert!(message.starts_with("is owned by uid 1001, not by root or uid 1000"), "{message}");
    }
}
