//! Wakes the daemon's loop when the kernel announces a change in an app
//! netns (the sockets of [`super::changes`]), so a link deleted or a table
//! flushed by hand is repaired at once instead of at the next timed pass.
//!
//! One thread waits on one epoll set that holds every subscription's
//! notification sockets, edge-triggered: each new announcement wakes the
//! loop once, and the pass that follows drains the sockets (and reads what
//! changed). A socket closes with its subscription, which takes it out of
//! the set. The daemon's own writes announce themselves too: the loop then
//! runs one pass more, which finds nothing to do.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::wake::Wake;

/// Event data of the stop fd; every other fd is a change announcement.
const STOP: u64 = u64::MAX;

/// The waiting thread and the set it waits on.
pub(crate) struct Notifier {
    epoll: Arc<Epoll>,
    stop: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier").finish_non_exhaustive()
    }
}

impl Notifier {
    /// Starts the thread; it sets `wake` on every announcement.
    pub(crate) fn start(wake: Wake) -> Result<Self> {
        let epoll = Arc::new(Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).context("epoll")?);
        let stop = Arc::new(
            EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                .context("eventfd")?,
        );
        epoll
            .add(stop.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, STOP))
            .context("watch the stop fd")?;
        let thread = {
            let epoll = epoll.clone();
            std::thread::Builder::new()
                .name("weft-netns-changes".into())
                .spawn(move || wait(&epoll, &wake))
                .context("start the change notifier")?
        };
        Ok(Notifier {
            epoll,
            stop,
            thread: Some(thread),
        })
    }

    /// Wakes the loop on every new message queued on `fd`.
    pub(crate) fn add(&self, fd: BorrowedFd<'_>) -> Result<()> {
        self.epoll
            .add(
                fd,
                EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLET, 0),
            )
            .context("watch a change socket")
    }
}

fn wait(epoll: &Epoll, wake: &Wake) {
    let mut events = [EpollEvent::empty(); 64];
    loop {
        match epoll.wait(&mut events, EpollTimeout::NONE) {
            Ok(n) => {
                if events[..n].iter().any(|e| e.data() == STOP) {
                    return;
                }
                if n > 0 {
                    wake.set();
                }
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                // The timed pass stays the safety net.
                tracing::warn!(error = %e, "cannot wait for netns changes; relying on timed passes");
                return;
            }
        }
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
