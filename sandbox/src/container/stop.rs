//! StopContainer: the image's stop signal, then SIGKILL after the timeout; a dead shim
//! makes the container exited with reason `ShimDied`.

use std::time::Duration;

use super::{ContainerRecord, ContainerState};
use crate::error::{Error, Result};
use crate::runtime::Runtime;
use crate::shim::Shim;

use crate::shim::SIGKILL;

impl Runtime {
    /// StopContainer: the stop signal, `timeout` to exit, then SIGKILL. Idempotent.
    pub async fn stop_container(&self, id: &str, timeout: Duration) -> Result<()> {
        // A container that is gone has nothing left to stop (CRI: idempotent).
        let id = match self.resolve_container(id) {
            Err(Error::NotFound(_)) => return Ok(()),
            r => r?,
        };
        let lock = self.containers().lock(&id);
        let _g = lock.lock().await;
        let Ok(rec) = self.container(&id) else {
            return Ok(()); // removed while this call waited for the lock
        };
        match rec.state {
            ContainerState::Exited => return Ok(()),
            ContainerState::Created => {
                // Never started: nothing runs; mark it exited so it can be removed.
                if let Some(s) = self.shim_of(&rec.pod_id) {
                    let _ = s.kill(&id, SIGKILL, false).await;
                }
                self.on_container_exit(&id, 0, 0);
                self.reap_container(&id).await;
                return Ok(());
            }
            _ => {}
        }
        let Some(s) = self.shim_of(&rec.pod_id) else {
            self.on_container_exit(&id, 255, 0);
            return Ok(());
        };
        let sig = signal_number(&rec.stop_signal).unwrap_or(15);
        if !timeout.is_zero() {
            match s.kill(&id, sig, false).await {
                Ok(()) => {}
                Err(e) if e.kind() == crate::ErrorKind::NotFound => {}
                Err(e) if e.shim_gone() => {
                    self.shim_died(&rec, &e).await;
                    return Ok(());
                }
                Err(e) => tracing::debug!(container = id, err = %e, "stop signal"),
            }
            if tokio::time::timeout(timeout, s.wait(&id)).await.is_ok() {
                self.finish_stop(&s, &id).await;
                return Ok(());
            }
        }
        match s.kill(&id, SIGKILL, true).await {
            Ok(()) => {}
            Err(e) if e.kind() == crate::ErrorKind::NotFound => {}
            Err(e) if e.shim_gone() => {
                self.shim_died(&rec, &e).await;
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), s.wait(&id)).await;
        self.finish_stop(&s, &id).await;
        Ok(())
    }

    /// The pod's shim died under a running container: the container's processes live on
    /// without it, so the shim binary's `delete` kills them and removes the runc container.
    pub(crate) async fn shim_died(&self, rec: &ContainerRecord, e: &Error) {
        tracing::warn!(container = rec.id, err = %e, "the pod's shim is gone; deleting the container's task without it");
        if let Ok(pod) = self.get(&rec.pod_id) {
            let bundle = self.ctr_dir(&rec.id).join("bundle");
            if let Err(e) =
                crate::shim::delete_dead(&pod.shim_binary, self.shim_env(), &rec.id, &bundle).await
            {
                tracing::warn!(container = rec.id, err = %e, "shim delete of a dead container task");
            }
        }
        self.on_container_exit(&rec.id, 255, 0);
    }

    pub(crate) async fn finish_stop(&self, s: &Shim, id: &str) {
        // The exit event normally lands first; if it was missed, ask the shim.
        if self.container(id).ok().map(|r| r.state) != Some(ContainerState::Exited) {
            let status = s.state(id).await.map(|st| st.exit_status).unwrap_or(137);
            self.on_container_exit(id, status, 0);
        }
        self.reap_container(id).await;
    }

    /// Stops every container of a pod, at once (SIGKILL), and deletes their tasks: the pod is
    /// going away, and its shim exits on Shutdown only once it holds no task.
    pub(crate) async fn stop_pod_containers(&self, pod_id: &str) -> Result<()> {
        for c in self.containers_of(pod_id) {
            self.stop_container(&c, Duration::ZERO).await?;
            let lock = self.containers().lock(&c);
            let _g = lock.lock().await;
            self.reap_container(&c).await;
        }
        Ok(())
    }
}

/// The number of signal `name` (`SIGTERM`, `term`, `15`, `SIGRTMIN+3`, `SIGRTMAX-2`) on Linux.
pub fn signal_number(name: &str) -> Option<u32> {
    let n = name.trim().to_ascii_uppercase();
    let n = n.strip_prefix("SIG").unwrap_or(&n);
    if let Ok(v) = n.parse::<u32>() {
        return (1..=64).contains(&v).then_some(v);
    }
    // Real-time signals as the C library numbers them for programs: RTMIN is 34 (glibc and
    // musl keep 32 and 33), RTMAX 64.
    let offset = |rest: &str| rest.parse::<u32>().ok().filter(|v| *v <= 30);
    if let Some(rest) = n.strip_prefix("RTMIN") {
        return match rest.strip_prefix('+') {
            None if rest.is_empty() => Some(34),
            Some(k) => offset(k).map(|k| 34 + k),
            None => None,
        };
    }
    if let Some(rest) = n.strip_prefix("RTMAX") {
        return match rest.strip_prefix('-') {
            None if rest.is_empty() => Some(64),
            Some(k) => offset(k).map(|k| 64 - k),
            None => None,
        };
    }
    Some(match n {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "ILL" => 4,
        "TRAP" => 5,
        "ABRT" | "IOT" => 6,
        "BUS" => 7,
        "FPE" => 8,
        "KILL" => 9,
        "USR1" => 10,
        "SEGV" => 11,
        "USR2" => 12,
        "PIPE" => 13,
        "ALRM" => 14,
        "TERM" => 15,
        "STKFLT" => 16,
        "CHLD" | "CLD" => 17,
        "CONT" => 18,
        "STOP" => 19,
        "TSTP" => 20,
        "TTIN" => 21,
        "TTOU" => 22,
        "URG" => 23,
        "XCPU" => 24,
        "XFSZ" => 25,
        "VTALRM" => 26,
        "PROF" => 27,
        "WINCH" => 28,
        "IO" | "POLL" => 29,
        "PWR" => 30,
        "SYS" => 31,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals() {
        assert_eq!(signal_number(""), None);
        assert_eq!(signal_number("SIGTERM"), Some(15));
        assert_eq!(signal_number("sigquit"), Some(3));
        assert_eq!(signal_number("9"), Some(9));
        assert_eq!(signal_number("SIGRTMIN+3"), Some(37));
        assert_eq!(signal_number("SIGRTMIN"), Some(34));
        assert_eq!(signal_number("SIGRTMAX-14"), Some(50));
        assert_eq!(signal_number("SIGRTMAX"), Some(64));
        assert_eq!(signal_number("SIGRTMIN+31"), None);
        assert_eq!(signal_number("SIGRTMINX"), None);
    }
}
