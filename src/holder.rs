//! Who holds something — a lease, the runner lock — as git-loop's records name it: a process
//! on a host, with its start time, so that a pid the system handed out again is never taken
//! for the holder. Leases, heartbeats, the reaper, `doctor`, `status` and `stop` all judge a
//! holder's liveness here.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub host: String,
    pub pid: u32,
    /// When the process started, in the system's own units ([`crate::process::start_time`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_start: Option<String>,
}

impl Holder {
    /// This process.
    pub fn me() -> Holder {
        let pid = std::process::id();
        Holder {
            host: crate::process::host(),
            pid,
            pid_start: crate::process::start_time(pid),
        }
    }

    /// Whether the holder runs on this host, where its liveness can be proven.
    pub fn is_here(&self) -> bool {
        self.host == crate::process::host()
    }

    /// Known dead: on this host, its process is gone (or its pid names another process now).
    /// A holder on another host is never known dead; its lease's expiry decides.
    pub fn is_dead(&self) -> bool {
        self.is_here() && !crate::process::alive(self.pid, self.pid_start.as_deref())
    }

    /// `pid N on HOST`, for messages.
    pub fn describe(&self) -> String {
        format!("pid {} on {}", self.pid, self.host)
    }
}
