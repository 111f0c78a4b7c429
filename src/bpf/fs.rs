//! The BPF file system, where pins live. systemd mounts it at /sys/fs/bpf at boot;
//! elsewhere (containers, other inits, a fresh test VM) it may be missing, and the
//! daemon mounts it. A mount the daemon made is unmounted at a clean stop if it
//! holds nothing (remove only what you created); with pins in it, it stays.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::statfs::{statfs, BPF_FS_MAGIC};

/// Where the bpffs is mounted on every distribution.
pub const BPFFS: &str = "/sys/fs/bpf";

/// What a fresh bpffs holds before anyone pins anything.
const KERNEL_ENTRIES: [&str; 2] = ["maps.debug", "progs.debug"];

#[derive(Debug, thiserror::Error)]
pub enum BpffsError {
    #[error("statfs {path}: {source}")]
    Stat { path: String, source: nix::Error },
    #[error("mount bpffs at {path}: {source}")]
    Mount { path: String, source: nix::Error },
    #[error("unmount bpffs at {path}: {source}")]
    Unmount { path: String, source: nix::Error },
}

/// A bpffs that is there; `mounted_by_us` says whether [`ensure`] mounted it.
#[derive(Debug)]
pub struct Bpffs {
    pub path: PathBuf,
    pub mounted_by_us: bool,
}

/// Whether `path` is a mounted bpffs.
pub fn is_bpffs(path: &Path) -> Result<bool, BpffsError> {
    let st = statfs(path).map_err(|source| BpffsError::Stat { path: path.display().to_string(), source })?;
    Ok(st.filesystem_type() == BPF_FS_MAGIC)
}

/// Mounts a bpffs at `path` unless one is there (mode 0700, as systemd does).
pub fn ensure(path: &Path) -> Result<Bpffs, BpffsError> {
    if is_bpffs(path)? {
        return Ok(Bpffs { path: path.to_path_buf(), mounted_by_us: false });
    }
    mount(
        Some("bpf"),
        path,
        Some("bpf"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0700"),
    )
    .map_err(|source| BpffsError::Mount { path: path.display().to_string(), source })?;
    Ok(Bpffs { path: path.to_path_buf(), mounted_by_us: true })
}

impl Bpffs {
    /// Unmounts the bpffs if we mounted it and nothing is pinned in it. Returns
    /// whether it was unmounted.
    pub fn release(self) -> Result<bool, BpffsError> {
        if !self.mounted_by_us {
            return Ok(false);
        }
        // The kernel's own iterators (maps.debug, progs.debug, with BPF_PRELOAD) are
        // in every fresh bpffs; anything else is someone's pin.
        let empty = std::fs::read_dir(&self.path)
            .map(|d| d.flatten().all(|e| KERNEL_ENTRIES.contains(&e.file_name().to_string_lossy().as_ref())))
            .unwrap_or(false);
        if !empty || !is_bpffs(&self.path)? {
            return Ok(false);
        }
        umount2(&self.path, MntFlags::empty())
            .map_err(|source| BpffsError::Unmount { path: self.path.display().to_string(), source })?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Privileged (mount): on a scratch directory, never on /sys/fs/bpf.
    #[test]
    fn mounts_when_missing_and_releases_only_its_own_empty_mount() {
        if !crate::lab::require_root_or_skip("bpf::fs::mounts_when_missing_and_releases_only_its_own_empty_mount") {
            return;
        }
        let dir = tempfile_dir();
        struct Unmount<'a>(&'a Path);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                while is_bpffs(self.0).unwrap_or(false) {
                    if umount2(self.0, MntFlags::MNT_DETACH).is_err() {
                        break;
                    }
                }
                let _ = std::fs::remove_dir(self.0);
            }
        }
        let _guard = Unmount(&dir);

        assert!(!is_bpffs(&dir).unwrap(), "a fresh directory is not a bpffs");
        let fs = ensure(&dir).unwrap();
        assert!(fs.mounted_by_us && is_bpffs(&dir).unwrap(), "ensure must mount a bpffs: {fs:?}");
        // A second caller finds it and does not own it.
        let again = ensure(&dir).unwrap();
        assert!(!again.mounted_by_us);
        assert!(!again.release().unwrap(), "a mount someone else made must stay");
        assert!(is_bpffs(&dir).unwrap());

        // With something pinned in it, even our own mount stays.
        std::fs::create_dir(dir.join("inferlane")).unwrap();
        let fs = Bpffs { path: dir.clone(), mounted_by_us: true };
        assert!(!fs.release().unwrap(), "a bpffs with pins must stay mounted");
        std::fs::remove_dir(dir.join("inferlane")).unwrap();

        let fs = Bpffs { path: dir.clone(), mounted_by_us: true };
        assert!(fs.release().unwrap(), "our empty mount must go");
        assert!(!is_bpffs(&dir).unwrap(), "still a bpffs after release");
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("inferlane-bpffs-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
