//! OS advisory locks on files (`std::fs::File::lock`): held as long as the returned file lives,
//! released by the kernel when the holder dies, so a crash never leaves one behind.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// `<git-common-dir>/loop/locks/<name>.lock`
pub fn path(common_dir: &Path, name: &str) -> PathBuf {
    common_dir
        .join("loop")
        .join("locks")
        .join(format!("{name}.lock"))
}

/// Opens (creating it and its directory) the lock file at `path`, without truncating it.
pub fn open(path: &Path) -> Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

/// Takes the lock at `path`, waiting for it.
pub fn wait(path: &Path) -> Result<File> {
    let file = open(path)?;
    file.lock()
        .with_context(|| format!("locking {}", path.display()))?;
    Ok(file)
}

/// Takes the lock at `path` if it is free; `None` when another process holds it.
pub fn try_take(path: &Path) -> Result<Option<File>> {
    let file = open(path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(anyhow::Error::new(e).context(format!("locking {}", path.display())))
        }
    }
}
