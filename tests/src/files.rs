//! File-system faults and copies for tests on a region's files: a size-limited tmpfs the test
//! mounts, filled to the last byte, and directory copies (pristine data directories, backups).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Whether the tests run as root (mounting a tmpfs, network namespaces).
pub fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// A tmpfs mounted for a test, unmounted (lazily: a process may still hold a file) on drop.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    pub fn mount(at: &Path, size: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(at)?;
        let status =
            Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(at).status();
        anyhow::ensure!(status.is_ok_and(|s| s.success()), "cannot mount a tmpfs at {}", at.display());
        Ok(Self(at.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system holding `path` until not one more byte fits, for want of space.
pub fn fill(path: &Path) -> std::io::Result<()> {
    let mut file = std::fs::File::create(path)?;
    for block in [64 * 1024, 512] {
        let bytes = vec![0u8; block];
        loop {
            match file.write_all(&bytes).and_then(|()| file.sync_all()) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Copies the directory `from` into `to`, recursively.
pub fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}
