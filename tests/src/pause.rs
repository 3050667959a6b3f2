//! A node paused with SIGSTOP: a process that is there but does not answer (a long GC pause, a
//! frozen VM), which tests tell apart from one that is gone (kill -9).

use domicile_types::RegionId;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::TestCluster;

/// A paused process, resumed (SIGCONT) when dropped, so a failing assertion never leaves it
/// stopped.
pub struct Paused(Pid);

impl Paused {
    /// Pauses `region`'s node.
    pub fn node(cluster: &TestCluster, region: &RegionId) -> anyhow::Result<Self> {
        let pid = cluster
            .cluster
            .processes()
            .find(|p| p.region.as_ref() == Some(region))
            .and_then(|p| p.pid())
            .ok_or_else(|| anyhow::anyhow!("no running node for {region}"))?;
        Self::process(pid)
    }

    /// Pauses process `pid`.
    pub fn process(pid: u32) -> anyhow::Result<Self> {
        let pid = Pid::from_raw(i32::try_from(pid)?);
        kill(pid, Signal::SIGSTOP)?;
        Ok(Self(pid))
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        let _ = kill(self.0, Signal::SIGCONT);
    }
}
