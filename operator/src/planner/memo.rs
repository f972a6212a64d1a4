//! The last plan, kept with a digest of the snapshot it came from: a pass
//! whose input did not change (every converged pass) reuses it instead of
//! planning the whole cluster again. `plan` is pure, so equal input means
//! equal output; the digest is SHA-256 over the snapshot's `Debug` form
//! (deterministic: every collection in it is ordered), streamed, so no copy
//! of the snapshot is kept.

use std::fmt::Write as _;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::{plan, Plan, Snapshot};

/// Streams formatted text into a hash.
struct HashWriter(Sha256);

impl std::fmt::Write for HashWriter {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.update(s.as_bytes());
        Ok(())
    }
}

/// SHA-256 of the snapshot's `Debug` form.
pub fn digest(s: &Snapshot) -> [u8; 32] {
    let mut w = HashWriter(Sha256::new());
    // Writing into a hash cannot fail.
    let _ = write!(w, "{s:?}");
    w.0.finalize().into()
}

/// The last plan and its input's digest.
#[derive(Default)]
pub struct PlanMemo {
    last: Option<([u8; 32], Arc<Plan>)>,
    reused: u64,
}

impl PlanMemo {
    /// The plan of `s`: the last one when `s` is what it was planned from.
    pub fn plan(&mut self, s: &Snapshot) -> Arc<Plan> {
        let d = digest(s);
        match &self.last {
            Some((last, p)) if *last == d => {
                self.reused += 1;
                p.clone()
            }
            _ => {
                // The old plan goes first: two whole plans at once would
                // raise the peak memory of every changing pass.
                self.last = None;
                let p = Arc::new(plan(s));
                self.last = Some((d, p.clone()));
                p
            }
        }
    }

    /// How many passes reused the last plan.
    pub fn reused(&self) -> u64 {
        self.reused
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::{NodeInfo, ObjectKey};
    use weft_api::{MeshAppSpec, Selector};

    fn snapshot() -> Snapshot {
        let mut s = Snapshot::default();
        s.apps.insert(
            ObjectKey::new("demo", "web"),
            MeshAppSpec {
                selector: Selector::labels([("tier", "web")]),
                ..Default::default()
            },
        );
        for n in ["n1", "n2"] {
            s.nodes.insert(
                n.into(),
                NodeInfo {
                    site: "local".into(),
                    address: "192.0.2.1".into(),
                    lost: false,
                },
            );
            s.add_workload(
                n,
                ObjectKey::new("demo", format!("web-{n}")),
                [("tier".to_string(), "web".to_string())].into(),
            );
        }
        s
    }

    #[test]
    fn an_unchanged_snapshot_reuses_the_plan_and_any_change_replans() {
        let mut memo = PlanMemo::default();
        let s = snapshot();
        let first = memo.plan(&s);
        assert_eq!(*first, plan(&s));
        assert_eq!(memo.plan(&s.clone()), first);
        assert_eq!(memo.reused(), 1);
        let mut moved = s.clone();
        moved.nodes.get_mut("n2").unwrap().lost = true;
        assert_eq!(*memo.plan(&moved), plan(&moved));
        assert_ne!(memo.plan(&moved), first);
        assert_eq!(memo.reused(), 2);
        let mut key = s.clone();
        key.add_public_key("n1", ObjectKey::new("demo", "web"), "K");
        assert_eq!(*memo.plan(&key), plan(&key));
        assert_eq!(memo.reused(), 2);
    }
}
