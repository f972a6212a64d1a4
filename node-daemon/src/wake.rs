//! Waking the daemon's loop when an input changes, instead of waiting for
//! its next timed pass: the operator writing this node's MeshNode, a
//! workload announced or withdrawn. The timed pass stays as the safety net
//! (an event missed, a watch that could not be set up), so a failure here
//! only costs latency, never correctness.

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use inotify::{Inotify, WatchMask};

/// Longest single sleep of [`Wake::wait`]: the signal thread sets only the
/// stop flag, and a stopping daemon should let go of its devices at once
/// (a restart's gap includes this wait).
pub const STOP_CHECK: Duration = Duration::from_millis(50);

/// Watched directories, each with the one file that counts (or any).
type Watches = Vec<(inotify::WatchDescriptor, Option<&'static str>)>;

/// A wake-up flag shared by the loop and whoever watches its inputs. The
/// loop sleeps on a condition variable rather than polling the flag, so an
/// idle daemon is not woken a hundred times a second to look at it.
#[derive(Clone, Debug, Default)]
pub struct Wake(Arc<(Mutex<bool>, Condvar)>);

impl Wake {
    /// Asks for a pass now.
    pub fn set(&self) {
        let (flag, cv) = &*self.0;
        *flag.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
    }

    /// Whether a pass was asked for since the last call (and clears it).
    pub fn take(&self) -> bool {
        let (flag, _) = &*self.0;
        std::mem::take(&mut *flag.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Sleeps until a pass is asked for (true, and clears it) or `timeout`
    /// passes (false); never longer than [`STOP_CHECK`] at a time, so
    /// callers re-check their stop flag.
    pub fn wait(&self, timeout: Duration) -> bool {
        let (flag, cv) = &*self.0;
        let deadline = Instant::now() + timeout.min(STOP_CHECK);
        let mut set = flag.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if std::mem::take(&mut *set) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            set = cv
                .wait_timeout(set, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// Watches each directory (created if missing) on a thread of its own and
/// sets `wake` on every change, or only on changes to the named file. The
/// thread lives as long as the process; without inotify it logs once and
/// leaves the loop to its timer.
pub fn watch(wake: &Wake, dirs: Vec<(PathBuf, Option<&'static str>)>) {
    let wake = wake.clone();
    let setup = || -> std::io::Result<(Inotify, Watches)> {
        let inotify = Inotify::init()?;
        let mut watches = Vec::new();
        for (dir, only) in &dirs {
            std::fs::create_dir_all(dir)?;
            // Files are replaced by rename (MOVED_TO) or written in place.
            let wd = inotify.watches().add(
                dir,
                WatchMask::CLOSE_WRITE
                    | WatchMask::MOVED_TO
                    | WatchMask::DELETE
                    | WatchMask::CREATE,
            )?;
            watches.push((wd, *only));
        }
        Ok((inotify, watches))
    };
    let (mut inotify, watches) = match setup() {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the daemon's inputs; passes run on the timer only");
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("weft-wake".into())
        .spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let events = match inotify.read_events_blocking(&mut buf) {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::warn!(error = %e, "input watch failed; passes run on the timer only");
                        return;
                    }
                };
                let mut hit = false;
                for ev in events {
                    let only = watches.iter().find(|(wd, _)| *wd == ev.wd).and_then(|(_, o)| *o);
                    hit |= match (only, ev.name) {
                        (None, _) => true,
                        (Some(file), Some(name)) => name == file,
                        (Some(_), None) => false,
                    };
                }
                if hit {
                    wake.set();
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the input watch; passes run on the timer only");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn woken_within(w: &Wake, d: Duration) -> bool {
        let t = Instant::now();
        while t.elapsed() < d {
            if w.wait(d.saturating_sub(t.elapsed())) {
                return true;
            }
        }
        false
    }

    #[test]
    fn wait_returns_at_once_on_set_and_times_out_otherwise() {
        let w = Wake::default();
        let t = Instant::now();
        assert!(!w.wait(Duration::from_millis(30)));
        assert!(t.elapsed() >= Duration::from_millis(30));
        let other = w.clone();
        let setter = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            other.set();
        });
        assert!(
            w.wait(Duration::from_secs(5)),
            "woken by set from another thread"
        );
        setter.join().unwrap();
        // Consumed: the next wait sleeps again.
        assert!(!w.take());
        w.set();
        assert!(w.take());
        assert!(!w.take());
    }

    #[test]
    fn a_change_to_a_watched_file_wakes_and_others_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let node = dir.path().join("node");
        let announced = dir.path().join("workloads");
        let w = Wake::default();
        watch(
            &w,
            vec![
                (node.clone(), Some("meshnode.json")),
                (announced.clone(), None),
            ],
        );
        // The daemon's own status write must not wake it.
        std::fs::write(node.join("status.json"), b"{}").unwrap();
        assert!(!woken_within(&w, Duration::from_millis(200)));
        // The operator replaces meshnode.json by rename.
        std::fs::write(node.join(".meshnode.json.tmp"), b"{}").unwrap();
        std::fs::rename(node.join(".meshnode.json.tmp"), node.join("meshnode.json")).unwrap();
        assert!(woken_within(&w, Duration::from_secs(2)));
        // Any announcement.
        std::fs::write(announced.join("w1.json"), b"{}").unwrap();
        assert!(woken_within(&w, Duration::from_secs(2)));
        std::fs::remove_file(announced.join("w1.json")).unwrap();
        assert!(woken_within(&w, Duration::from_secs(2)));
    }
}
