//! Workload addresses inside this node's slice of each app range. Sticky: a
//! workload keeps its address while it exists, and new workloads never
//! renumber old ones. Persisted so a daemon restart changes nothing.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// Allocations per app id: workload key -> address.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadIpam {
    /// app id -> (workload `namespace/name` -> address)
    pub apps: BTreeMap<String, BTreeMap<String, Ipv4Addr>>,
}

/// Why an address could not be given.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("node slice {slice} has no free address for workload {workload}")]
pub struct Exhausted {
    /// The slice.
    pub slice: Ipv4Net,
    /// The workload that got none.
    pub workload: String,
}

impl WorkloadIpam {
    /// Assigns addresses to `workloads` (sorted keys) of one app in `slice`,
    /// keeping existing ones and releasing those of workloads that are gone.
    /// The slice's first usable address belongs to the node's tunnel.
    pub fn assign(
        &mut self,
        app_id: &str,
        slice: Ipv4Net,
        workloads: &[String],
    ) -> (BTreeMap<String, Ipv4Addr>, Vec<Exhausted>) {
        let entry = self.apps.entry(app_id.to_string()).or_default();
        entry.retain(|w, ip| workloads.contains(w) && slice.contains(&*ip) && usable(slice, *ip));
        let mut errors = Vec::new();
        for w in workloads {
            if entry.contains_key(w) {
                continue;
            }
            let used: std::collections::BTreeSet<Ipv4Addr> = entry.values().copied().collect();
            match slice.hosts().skip(1).find(|ip| !used.contains(ip)) {
                Some(ip) => {
                    entry.insert(w.clone(), ip);
                }
                None => errors.push(Exhausted {
                    slice,
                    workload: w.clone(),
                }),
            }
        }
        (entry.clone(), errors)
    }

    /// Forgets apps not in `keep`.
    pub fn retain_apps(&mut self, keep: &[String]) {
        self.apps.retain(|k, _| keep.contains(k));
    }
}

fn usable(slice: Ipv4Net, ip: Ipv4Addr) -> bool {
    ip != slice.network() && ip != slice.broadcast() && Some(ip) != slice.hosts().next()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn first_workload_gets_the_address_after_the_tunnel() {
        let mut ipam = WorkloadIpam::default();
        let (m, e) = ipam.assign("a", net("10.1.2.0/24"), &["ns/w1".into()]);
        assert!(e.is_empty());
        assert_eq!(m["ns/w1"], "10.1.2.2".parse::<Ipv4Addr>().unwrap());
    }

    #[test]
    fn exhausted_slice_reports_the_workload() {
        let mut ipam = WorkloadIpam::default();
        // /30: network, tunnel, one workload, broadcast.
        let (m, e) = ipam.assign("a", net("10.1.2.0/30"), &["ns/w1".into(), "ns/w2".into()]);
        assert_eq!(m.len(), 1);
        assert_eq!(e[0].workload, "ns/w2");
    }

    proptest! {
        #[test]
        fn adding_and_removing_workloads_never_renumbers_the_others(
            first in proptest::collection::btree_set("[a-z]{1,6}", 1..20),
            extra in proptest::collection::btree_set("[A-Z]{1,6}", 0..20),
            drop_every in 2usize..5,
        ) {
            let slice = net("10.9.0.0/24");
            let mut ipam = WorkloadIpam::default();
            let a: Vec<String> = first.iter().cloned().collect();
            let (before, _) = ipam.assign("x", slice, &a);
            let mut b: Vec<String> = a.iter().enumerate().filter(|(i, _)| i % drop_every != 0).map(|(_, w)| w.clone()).collect();
            b.extend(extra.iter().cloned());
            b.sort();
            let (after, errs) = ipam.assign("x", slice, &b);
            prop_assert!(errs.is_empty());
            for (w, ip) in &after {
                if let Some(old) = before.get(w) { prop_assert_eq!(old, ip); }
                prop_assert!(slice.contains(ip));
            }
            let uniq: std::collections::BTreeSet<_> = after.values().collect();
            prop_assert_eq!(uniq.len(), after.len());
        }
    }
}
