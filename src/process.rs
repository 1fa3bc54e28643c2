//! Processes: this host's name, a process's identity (pid and start time, so that a reused pid
//! is never taken for the holder of a lease), liveness, and signals to process groups.

use std::process::{Command, Stdio};

/// Caps glibc's malloc at two arenas (unless `MALLOC_ARENA_MAX` says otherwise). glibc gives
/// threads their own arenas, up to eight per core, and keeps what each has held: a runner
/// starts a thread per task, and the worktree checkout, status and removal start more, so
/// over 1,000 tasks its heap grew from 7 to 14 MiB in steps with the default and stayed at
/// 8–9 MiB with two (benches/runner.py). Its threads mostly wait on child processes, so the
/// contention two arenas add is not measurable. Call it before any thread starts.
#[allow(unsafe_code)]
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt takes two integers and only changes a tuning parameter of glibc's
        // allocator; it is called from `main` before any other thread exists, so no
        // allocation is under way concurrently. Its result (0 when refused) only means the
        // default stays.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

/// How long the output of an ended process group is still read: what its members wrote before
/// they were killed is in the pipe; a descendant that left the group (`setsid`) and holds the
/// pipe open is not waited for past this.
pub const DRAIN: std::time::Duration = std::time::Duration::from_millis(500);

/// Reads `reader` until it ends, handing each chunk to `on_data`, or until `done` has been set
/// for [`DRAIN`] with nothing more to read: a pipe that something outside the process group
/// keeps open never holds its reader. Returns whether the pipe really ended.
pub fn read_pipe(
    reader: std::io::PipeReader,
    done: &std::sync::atomic::AtomicBool,
    mut on_data: impl FnMut(&[u8]),
) -> bool {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let mut reader = reader;
    let mut buf = [0u8; 16 * 1024];
    let mut done_at: Option<std::time::Instant> = None;
    loop {
        if done.load(std::sync::atomic::Ordering::SeqCst) {
            let at = *done_at.get_or_insert_with(std::time::Instant::now);
            if at.elapsed() >= DRAIN {
                return false;
            }
        }
        if !readable(reader.as_raw_fd(), 100) {
            continue;
        }
        match reader.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => on_data(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}

/// Whether `fd` has something to read (or its end) within `ms` milliseconds.
#[allow(unsafe_code)]
fn readable(fd: std::os::fd::RawFd, ms: i32) -> bool {
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `poll` is handed one valid, initialised pollfd that lives on this stack frame
    // for the whole call, and a count of 1; it only writes that struct's `revents`. `fd` is an
    // open descriptor the caller owns for the duration (a pipe's read end).
    let n = unsafe { libc::poll(&mut poll, 1, ms) };
    n > 0 && poll.revents != 0
}

/// The executable file `name` in a directory of PATH.
pub fn which(name: &str) -> Option<std::path::PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(name))
        .find(|p| executable(p).is_ok())
}

/// `Ok` when `path` is an executable file; else why not.
pub fn executable(path: &std::path::Path) -> std::result::Result<(), &'static str> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Err(_) => Err("does not exist"),
        Ok(m) if !m.is_file() => Err("is not a file"),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => Err("is not executable"),
        Ok(_) => Ok(()),
    }
}

/// This machine's name.
pub fn host() -> String {
    for path in ["/proc/sys/kernel/hostname", "/etc/hostname"] {
        if let Ok(name) = std::fs::read_to_string(path)
            && !name.trim().is_empty()
        {
            return name.trim().to_string();
        }
    }
    Command::new("uname")
        .arg("-n")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// When process `pid` started, in the system's own units (Linux: clock ticks since boot, from
/// /proc/<pid>/stat; elsewhere: what `ps -o lstart=` prints). `None` if there is no such process.
pub fn start_time(pid: u32) -> Option<String> {
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The command name is in parentheses and may contain spaces: count after the last ')'.
        let rest = &stat[stat.rfind(')')? + 2..];
        return rest.split_whitespace().nth(19).map(str::to_string);
    }
    if std::path::Path::new("/proc/self/stat").exists() {
        return None; // Linux, and the process is gone.
    }
    let out = Command::new("ps")
        .args(["-o", "lstart=", "-p", &pid.to_string()])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// The process group of process `pid`.
pub fn pgid(pid: u32) -> Option<u32> {
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        let rest = &stat[stat.rfind(')')? + 2..];
        return rest.split_whitespace().nth(2)?.parse().ok();
    }
    let out = Command::new("ps")
        .args(["-o", "pgid=", "-p", &pid.to_string()])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// Whether the process `pid` that started at `start` is still running.
pub fn alive(pid: u32, start: Option<&str>) -> bool {
    match (start_time(pid), start) {
        (Some(now), Some(then)) => now == then,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// A signal git-loop sends to process groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Term,
    Kill,
}

impl Signal {
    fn number(self) -> libc::c_int {
        match self {
            Signal::Term => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
        }
    }
}

/// Sends `signal` to the process group `pgid`. A group that is already gone is not an error.
pub fn signal_group(pgid: u32, signal: Signal) {
    let _ = kill(pgid, true, signal.number());
}

/// Sends `signal` to the process `pid` alone. One already gone is not an error.
pub fn signal_process(pid: u32, signal: Signal) {
    let _ = kill(pid, false, signal.number());
}

/// Whether any process of group `pgid` is still running.
pub fn group_alive(pgid: u32) -> bool {
    kill(pgid, true, 0)
}

/// `kill(-id, sig)` for a group, `kill(id, sig)` for a process; true if the call succeeded.
/// Refuses ids that would address something other than one group or process: 0 (the
/// caller's own group) and 1 (init, or with the minus, `-1`: every process the caller may
/// signal), and ids beyond `pid_t`. One of the crate's three `unsafe` calls (the others tune
/// malloc and poll a pipe, above): the standard library has no way to signal a process group,
/// nor a process it did not spawn.
#[allow(unsafe_code)]
fn kill(id: u32, group: bool, sig: libc::c_int) -> bool {
    let Ok(id) = libc::pid_t::try_from(id) else {
        return false;
    };
    if id <= 1 {
        return false;
    }
    let target = if group { -id } else { id };
    // SAFETY: kill(2) takes two plain integers, touches no memory of this process, and is
    // async-signal-safe; with id > 1, `-id` addresses exactly the process group `id` and
    // `id` exactly the process `id`.
    unsafe { libc::kill(target, sig) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_identified() {
        let me = std::process::id();
        let start = start_time(me);
        assert!(start.is_some());
        assert!(alive(me, start.as_deref()));
        assert!(!alive(me, Some("not when it started")));
        assert!(!host().is_empty());
    }

    #[test]
    fn a_group_is_signalled_and_never_group_0_or_1() {
        use std::os::unix::process::CommandExt;
        // 0 would be this process's own group, -1 every process it may signal.
        assert!(!group_alive(0));
        assert!(!group_alive(1));
        let mut child = Command::new("sleep")
            .arg("600")
            .process_group(0)
            .spawn()
            .expect("spawn sleep");
        let group = child.id();
        assert!(group_alive(group));
        signal_group(group, Signal::Kill);
        let status = child.wait().expect("reap");
        assert!(!status.success(), "killed, not finished: {status}");
        assert!(!group_alive(group));
    }
}
