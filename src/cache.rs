//! A cache of task documents, keyed on the commit each task ref points at.
//!
//! It is never the source of truth: an entry is used only when a task ref points at exactly the
//! commit the entry was read from, and commits are immutable, so a ref moved by anything (a
//! plain `git update-ref`, a fetch) simply misses. A missing, unreadable or foreign cache file is
//! ignored and rebuilt. It lives at `<git-common-dir>/loop/cache/`.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use gix::ObjectId;
use serde::{Deserialize, Serialize};

use crate::task::Task;

const VERSION: u32 = 1;

#[derive(Deserialize)]
struct FileOwned {
    version: u32,
    entries: Vec<(String, Task)>,
}

#[derive(Serialize)]
struct FileRef<'a> {
    version: u32,
    entries: Vec<(String, &'a Task)>,
}

pub struct TaskCache {
    path: PathBuf,
    entries: HashMap<ObjectId, Task>,
    misses: usize,
}

impl TaskCache {
    /// Loads the cache of the repository whose common dir is `common_dir`; empty if unusable.
    pub fn load(common_dir: &Path) -> TaskCache {
        let path = file_path(common_dir);
        let entries = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<FileOwned>(&bytes).ok())
            .filter(|f| f.version == VERSION)
            .map(|f| {
                f.entries
                    .into_iter()
                    .filter_map(|(tip, task)| {
                        Some((ObjectId::from_hex(tip.as_bytes()).ok()?, task))
                    })
                    .collect()
            })
            .unwrap_or_default();
        TaskCache {
            path,
            entries,
            misses: 0,
        }
    }

    /// The document read from commit `tip`, if cached. Each entry is handed out once.
    pub fn take(&mut self, tip: &ObjectId) -> Option<Task> {
        let hit = self.entries.remove(tip);
        if hit.is_none() {
            self.misses += 1;
        }
        hit
    }

    /// Rewrites the cache to hold exactly `live` (tip, document) pairs, if it changed: a miss
    /// was read from Git, or an entry's ref has moved on. Failure to write is not an error.
    pub fn store<'a>(self, live: impl Iterator<Item = (ObjectId, &'a Task)>) {
        if self.misses == 0 && self.entries.is_empty() {
            return;
        }
        write(&self.path, live);
    }
}

fn file_path(common_dir: &Path) -> PathBuf {
    common_dir.join("loop").join("cache").join("tasks.json")
}

/// Writes the file to hold exactly `live`. Failure to write is not an error.
fn write<'a>(path: &Path, live: impl Iterator<Item = (ObjectId, &'a Task)>) {
    let file = FileRef {
        version: VERSION,
        entries: live.map(|(tip, task)| (tip.to_string(), task)).collect(),
    };
    if let Err(e) = write_atomically(path, &file) {
        tracing::debug!("not caching task documents in {}: {e}", path.display());
    }
}

/// The documents of the task refs as this process last listed them, by commit. A runner lists
/// the backlog on every iteration; this spares it re-reading and re-parsing the cache file (and
/// Git) for the tasks that did not move since. Keyed by commit like the file, so it cannot lie.
static MEMO: LazyLock<Mutex<HashMap<ObjectId, Task>>> = LazyLock::new(Default::default);

/// The process's memo of task documents (see [`MEMO`]).
pub fn memo() -> MutexGuard<'static, HashMap<ObjectId, Task>> {
    // A panic while holding it cannot leave a wrong entry: entries are keyed by commit.
    MEMO.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// When this process last wrote the file through [`store_now_and_then`].
static LAST_WRITE: Mutex<Option<Instant>> = Mutex::new(None);

/// Rewrites the cache file to hold exactly `live`, at most once every ten seconds per process.
pub fn store_now_and_then<'a>(common_dir: &Path, live: impl Iterator<Item = (ObjectId, &'a Task)>) {
    let mut last = LAST_WRITE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if last.is_some_and(|at| at.elapsed() < Duration::from_secs(10)) {
        return;
    }
    *last = Some(Instant::now());
    drop(last);
    write(&file_path(common_dir), live);
}

fn write_atomically(path: &Path, file: &FileRef<'_>) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".tasks.json.{}.{:x}",
        std::process::id(),
        crate::rand::u64()
    ));
    let result = (|| {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        serde_json::to_writer(&mut out, file)?;
        out.flush()?;
        drop(out);
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
