//! boringtun, in process. Each device is created while the calling thread is
//! in the node netns (so boringtun's UDP sockets are bound there), its TUN
//! link is then moved into the app netns over rtnetlink. The device is
//! configured over a private socketpair (`uapi_fd` mode): boringtun binds no
//! socket under /var/run/wireguard itself (its names would collide between
//! namespaces, it installs signal handlers and leaves stale files after a
//! crash). What `wg show` reads there instead is a read-only socket the
//! daemon serves in front of that socketpair (see [`super::wgsock`]).
//!
//! UDP buffer sizes: boringtun 0.7 exposes no way to size its sockets, so they
//! keep the node netns defaults (net.core.rmem_default); host-wide sysctls are
//! deliberately not touched here.

use std::os::fd::{IntoRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use boringtun::device::{DeviceConfig, DeviceHandle};
use nix::fcntl::{fcntl, FcntlArg};

use super::control::{lock, Control};
use super::uapi::Uapi;
use super::wgsock::{WgServer, WgSocket};

/// How far above the highest open fd the uapi fd is placed (see [`high_fd`]).
const FD_HEADROOM: RawFd = 256;
/// Worker threads per device.
const THREADS: usize = 2;
/// How long tearing a device down may take before we give up waiting.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Moves `fd` to a number well above every fd open now, and gives up
/// ownership of it (boringtun takes it).
///
/// Why: boringtun 0.7.1 rebinds its UDP sockets when `listen_port` is set and
/// then unregisters the *original* socket's fd from its event table, while it
/// had registered a `try_clone` of it. That index is out of bounds (a panic
/// in a worker thread, the device dies) when the clone got a lower fd number
/// than the original, which happens when another thread closed fds in
/// between. The event table is sized by the highest registered fd, so a
/// registered uapi fd above any fd the process holds keeps that lookup in
/// bounds. (The clones of the first, random-port sockets stay registered
/// and bound until the device stops: a boringtun leak we cannot avoid
/// without patching it.)
fn high_fd(fd: OwnedFd) -> RawFd {
    let highest = std::fs::read_dir("/proc/self/fd")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<RawFd>().ok()))
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0);
    match fcntl(&fd, FcntlArg::F_DUPFD_CLOEXEC(highest + FD_HEADROOM)) {
        Ok(high) => high, // `fd` is closed when dropped here
        Err(e) => {
            tracing::warn!(error = %e, "cannot move the uapi fd up; boringtun may panic on a port change");
            fd.into_raw_fd()
        }
    }
}

/// One running boringtun device we own.
pub(crate) struct UserspaceDevice {
    /// Interface (TUN link) name.
    pub interface: String,
    handle: Option<DeviceHandle>,
    control: Arc<Mutex<Control>>,
    /// The device's socket for `wg`, when the daemon serves one.
    wg_socket: Option<WgSocket>,
}

impl std::fmt::Debug for UserspaceDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserspaceDevice")
            .field("interface", &self.interface)
            .field("wg_socket", &self.wg_socket)
            .finish_non_exhaustive()
    }
}

impl UserspaceDevice {
    /// Starts a device named `interface` in the calling thread's current
    /// netns (the caller makes sure that is the node netns).
    pub(crate) fn start(interface: &str) -> Result<Self> {
        let (ours, theirs) = UnixStream::pair().context("uapi socketpair")?;
        let uapi = Uapi::new(ours)?;
        // boringtun takes ownership of this fd (it wraps it in a UnixStream).
        let fd = high_fd(theirs.into());
        let config = DeviceConfig {
            n_threads: THREADS,
            use_connected_socket: false,
            use_multi_queue: false,
            uapi_fd: fd,
        };
        let handle = match DeviceHandle::new(interface, config) {
            Ok(h) => h,
            Err(e) => {
                // Device creation failed before or after taking the fd; close
                // ours so nothing keeps waiting on it.
                uapi.shutdown();
                return Err(anyhow!("start boringtun device {interface}: {e}"));
            }
        };
        Ok(UserspaceDevice {
            interface: interface.to_string(),
            handle: Some(handle),
            control: Arc::new(Mutex::new(Control::new(uapi))),
            wg_socket: None,
        })
    }

    /// The device's control side (held for the whole of a multi-step change).
    pub(crate) fn control(&self) -> MutexGuard<'_, Control> {
        lock(&self.control)
    }

    /// Serves the device to `wg` as `<dir>/<name>.sock` (see
    /// [`super::wgsock`]). Best effort: the mesh works without it, so a
    /// failure is logged, not returned.
    pub(crate) fn serve_wg_socket(&mut self, server: &WgServer, dir: &Path, name: &str) {
        match WgSocket::start(server, dir, name, self.control.clone()) {
            Ok(s) => self.wg_socket = s,
            Err(e) => {
                tracing::warn!(interface = %self.interface, socket = name, error = %format!("{e:#}"), "cannot serve a socket for `wg`")
            }
        }
    }

    /// Stops the device and waits (bounded) for its threads, so its UDP
    /// sockets and TUN link are gone when this returns.
    pub(crate) fn stop(&mut self) {
        // The socket first: `wg` must not find a device that is going away.
        if let Some(mut s) = self.wg_socket.take() {
            s.stop();
        }
        let Some(mut handle) = self.handle.take() else {
            return;
        };
        // Hanging up the UAPI stream makes every worker thread exit (boringtun
        // treats a hang-up on the uapi fd as "stop").
        self.control().uapi.shutdown();
        let (tx, rx) = mpsc::channel();
        let waiter = std::thread::Builder::new().spawn(move || {
            handle.wait();
            drop(handle); // closes the TUN fd and the UDP sockets
            let _ = tx.send(());
        });
        match waiter {
            Ok(waiter) => match rx.recv_timeout(STOP_TIMEOUT) {
                // The waiter is past its last step: reap it, so no thread of
                // this device outlives `stop`.
                Ok(()) => drop(waiter.join()),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // A worker thread panicked (boringtun unwraps the join);
                    // the handle was dropped while unwinding, which stops the rest.
                    tracing::warn!(interface = %self.interface, "a boringtun thread had panicked");
                    drop(waiter.join());
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    tracing::warn!(interface = %self.interface, "boringtun device did not stop in time")
                }
            },
            Err(e) => {
                tracing::warn!(interface = %self.interface, error = %e, "cannot wait for boringtun device")
            }
        }
    }
}

impl Drop for UserspaceDevice {
    fn drop(&mut self) {
        self.stop();
    }
}
