//! State shared between the attach server and the run loop.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use weft_api::attach::{Attachment, WorkloadRef};

use crate::storage;

/// What the run loop concluded about a workload in its last pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Attached with this interface.
    Attached(Attachment),
    /// No MeshApp selects the workload.
    NotMeshed,
    /// Attaching failed; the message names the workload and the cause.
    Failed {
        /// CNI code.
        code: u32,
        /// Message.
        message: String,
    },
}

/// What [`Shared::unregister`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unregistered {
    /// It was registered for that container, and is no longer.
    Removed,
    /// Nothing was registered under the key.
    Unknown,
    /// The key is registered for this other container; left as it is.
    OtherContainer(String),
}

/// How a wait for a pass ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Waited {
    /// A pass satisfied the condition; its outcome.
    Done(Option<Outcome>),
    /// The registration waited for was removed or replaced: `now` is what
    /// is registered instead, `last` the last outcome published for the key.
    Withdrawn {
        /// The registration that replaced it, if any.
        now: Option<WorkloadRef>,
        /// Last published outcome for the key.
        last: Option<Outcome>,
    },
    /// The timeout passed; the last outcome seen.
    TimedOut(Option<Outcome>),
}

#[derive(Default)]
struct Inner {
    /// Workloads announced by the runtime: `namespace/name` -> reference.
    registered: BTreeMap<String, WorkloadRef>,
    /// Outcomes of the last pass, per `namespace/name`.
    outcomes: BTreeMap<String, Outcome>,
    /// Bumped on every publish, so waiters see fresh passes only.
    pass: u64,
}

/// Registry plus published outcomes, persisted so a restarted daemon
/// re-attaches the workloads the runtime announced before.
pub struct Shared {
    inner: Mutex<Inner>,
    published: Condvar,
    path: Option<PathBuf>,
    /// The run loop's wake-up: a registration that changes what is
    /// registered starts a pass at once, so an ADD is not answered a timer
    /// later.
    wake: Option<crate::wake::Wake>,
}

/// `namespace/name` of a workload reference.
pub fn key(w: &WorkloadRef) -> String {
    format!("{}/{}", w.namespace, w.name)
}

impl Shared {
    /// In memory only (tests).
    pub fn in_memory() -> Self {
        Shared {
            inner: Mutex::new(Inner::default()),
            published: Condvar::new(),
            path: None,
            wake: None,
        }
    }

    /// Wakes the run loop (`wake`) whenever what is registered changes.
    pub fn waking(mut self, wake: crate::wake::Wake) -> Self {
        self.wake = Some(wake);
        self
    }

    fn changed(&self) {
        if let Some(w) = &self.wake {
            w.set();
        }
    }

    /// Backed by `path` (0600); loads what a previous run registered.
    pub fn persistent(path: PathBuf) -> Result<Self, crate::Error> {
        let registered = storage::read_json(&path)?.unwrap_or_default();
        Ok(Shared {
            inner: Mutex::new(Inner {
                registered,
                ..Default::default()
            }),
            published: Condvar::new(),
            path: Some(path),
            wake: None,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panicked holder leaves plain data behind; keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn persist(&self, inner: &Inner) {
        if let Some(p) = &self.path {
            if let Err(e) = storage::write_json_private(p, &inner.registered) {
                tracing::warn!(error = %e, "cannot persist attach registry");
            }
        }
    }

    /// Records (or refreshes) a workload the runtime announced.
    pub fn register(&self, w: WorkloadRef) {
        let mut g = self.lock();
        if g.registered.get(&key(&w)) != Some(&w) {
            g.registered.insert(key(&w), w);
            self.persist(&g);
            self.changed();
            // An ADD waiting for the registration this one replaced must
            // hear of it now, not when its wait times out.
            self.published.notify_all();
        }
    }

    /// Forgets the workload `k` if it is registered for container
    /// `container_id` (a DEL of an old sandbox leaves the pod's new one
    /// alone).
    pub fn unregister(&self, k: &str, container_id: &str) -> Unregistered {
        let mut g = self.lock();
        let found = match g.registered.get(k) {
            None => return Unregistered::Unknown,
            Some(r) if r.container_id != container_id => {
                return Unregistered::OtherContainer(r.container_id.clone())
            }
            Some(_) => Unregistered::Removed,
        };
        g.registered.remove(k);
        self.persist(&g);
        self.changed();
        self.published.notify_all();
        found
    }

    /// Workloads currently registered (the run loop's input).
    pub fn registered(&self) -> Vec<WorkloadRef> {
        self.lock().registered.values().cloned().collect()
    }

    /// The run loop publishes the outcome of a pass for every registered workload.
    pub fn publish(&self, outcomes: BTreeMap<String, Outcome>) {
        let mut g = self.lock();
        g.outcomes = outcomes;
        g.pass += 1;
        self.published.notify_all();
    }

    /// The latest outcome for `k`, if any pass has decided one.
    pub fn outcome(&self, k: &str) -> Option<Outcome> {
        self.lock().outcomes.get(k).cloned()
    }

    /// Waits until a pass published *after this call* satisfies `done`, or
    /// `timeout` passes. Returns the last outcome seen for `k`.
    pub fn wait_for(
        &self,
        k: &str,
        timeout: Duration,
        done: impl Fn(Option<&Outcome>) -> bool,
    ) -> (bool, Option<Outcome>) {
        match self.wait(k, None, timeout, done) {
            Waited::Done(o) => (true, o),
            Waited::TimedOut(o) | Waited::Withdrawn { last: o, .. } => (false, o),
        }
    }

    /// Waits like [`wait_for`](Self::wait_for) for a pass that decided an
    /// outcome for `w`, but stops as soon as `w` is no longer what is
    /// registered under its key (a DEL or a newer ADD withdrew it): no pass
    /// will decide about it any more.
    pub fn wait_decided(&self, w: &WorkloadRef, timeout: Duration) -> Waited {
        self.wait(&key(w), Some(w), timeout, |o| o.is_some())
    }

    fn wait(
        &self,
        k: &str,
        registered_as: Option<&WorkloadRef>,
        timeout: Duration,
        done: impl Fn(Option<&Outcome>) -> bool,
    ) -> Waited {
        let deadline = Instant::now() + timeout;
        let mut g = self.lock();
        let start = g.pass;
        loop {
            if g.pass > start && done(g.outcomes.get(k)) {
                return Waited::Done(g.outcomes.get(k).cloned());
            }
            if let Some(w) = registered_as {
                let now = g.registered.get(k);
                if now != Some(w) {
                    return Waited::Withdrawn {
                        now: now.cloned(),
                        last: g.outcomes.get(k).cloned(),
                    };
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Waited::TimedOut(g.outcomes.get(k).cloned());
            }
            g = self
                .published
                .wait_timeout(g, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(container: &str) -> WorkloadRef {
        WorkloadRef {
            container_id: container.into(),
            netns: "/var/run/netns/p1".into(),
            namespace: "demo".into(),
            name: "web-1".into(),
        }
    }

    #[test]
    fn a_change_of_what_is_registered_wakes_the_loop_and_nothing_else_does() {
        let wake = crate::wake::Wake::default();
        let s = Shared::in_memory().waking(wake.clone());
        s.register(w("c1"));
        assert!(wake.take(), "a new registration wakes the loop");
        s.register(w("c1"));
        assert!(!wake.take(), "the same registration again does not");
        s.publish(BTreeMap::new());
        assert!(!wake.take(), "the loop's own publishing does not");
        assert_eq!(
            s.unregister("demo/web-1", "c2"),
            Unregistered::OtherContainer("c1".into())
        );
        assert!(!wake.take(), "a DEL of another sandbox changes nothing");
        s.register(w("c2"));
        assert!(wake.take(), "a new sandbox of the pod wakes it");
        assert_eq!(s.unregister("demo/web-1", "c2"), Unregistered::Removed);
        assert!(wake.take(), "a DEL wakes it");
    }
}
