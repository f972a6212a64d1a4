//! Address management: one IPv4 range per app (explicit or allocated from the
//! pool) and one slice of it per (app, node). Allocations are sticky: whatever
//! was handed out before is kept, newcomers take the lowest free space.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::error::{ErrorKind, PlanError};
use super::snapshot::{ObjectKey, PlannerConfig};
use super::validate::object_name;

/// What the range allocator needs to know about one app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeRequest {
    /// `spec.addressSpace`, parsed (None if unset or unparseable).
    pub explicit: Option<Ipv4Net>,
    /// The range the app had before.
    pub previous: Option<Ipv4Net>,
    /// Whether the app passed validation (invalid apps only hold on to their
    /// previous range so it is not given away while the user fixes a typo).
    pub valid: bool,
}

/// Whether two ranges share any address.
pub fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn start(n: &Ipv4Net) -> u64 {
    u64::from(u32::from(n.network()))
}

fn end(n: &Ipv4Net) -> u64 {
    u64::from(u32::from(n.broadcast()))
}

/// Ranges handed out so far, by first address (they never overlap: a range
/// is added only when it overlaps none). Finding an overlap is a lookup, and
/// pool allocations resume where the previous one ended, so a pass assigns
/// n ranges in O(n log n) (a scan of a list per lookup made 5,000 apps take
/// most of a 27 s pass).
struct Taken<'a> {
    by_start: BTreeMap<u64, (Ipv4Net, &'a ObjectKey)>,
    /// Where the next pool allocation may start looking: every block of the
    /// allocation size below it is taken.
    cursor: Option<u64>,
}

impl<'a> Taken<'a> {
    fn new() -> Self {
        Taken {
            by_start: BTreeMap::new(),
            cursor: None,
        }
    }

    /// A taken range sharing an address with `[a, b]`.
    fn overlapping(&self, a: u64, b: u64) -> Option<(Ipv4Net, &'a ObjectKey)> {
        let (_, (net, key)) = self.by_start.range(..=b).next_back()?;
        (end(net) >= a).then_some((*net, *key))
    }

    fn find(&self, n: &Ipv4Net) -> Option<(Ipv4Net, &'a ObjectKey)> {
        self.overlapping(start(n), end(n))
    }

    fn insert(&mut self, n: Ipv4Net, key: &'a ObjectKey) {
        self.by_start.insert(start(&n), (n, key));
    }

    /// Lowest free block of `/prefix` in `pool` (as [`allocate`]).
    fn allocate(&mut self, pool: &Ipv4Net, prefix: u8) -> Option<Ipv4Net> {
        if prefix < pool.prefix_len() || prefix > 32 {
            return None;
        }
        let size = 1u64 << (32 - prefix);
        let pool_end = end(pool);
        let mut candidate = self.cursor.unwrap_or(start(pool)).max(start(pool));
        while candidate + size - 1 <= pool_end {
            match self.overlapping(candidate, candidate + size - 1) {
                Some((t, _)) => candidate = (end(&t) + 1).div_ceil(size) * size,
                None => {
                    self.cursor = Some(candidate);
                    let addr = Ipv4Addr::from(u32::try_from(candidate).ok()?);
                    return Ipv4Net::new(addr, prefix).ok();
                }
            }
        }
        self.cursor = Some(candidate);
        None
    }
}

/// Lowest block of `/prefix` in `pool` overlapping none of `taken`.
pub fn allocate(pool: &Ipv4Net, prefix: u8, taken: &[Ipv4Net]) -> Option<Ipv4Net> {
    if prefix < pool.prefix_len() || prefix > 32 {
        return None;
    }
    let size = 1u64 << (32 - prefix);
    let pool_end = end(pool);
    let mut candidate = start(pool);
    'search: while candidate + size - 1 <= pool_end {
        for t in taken {
            if start(t) < candidate + size && candidate <= end(t) {
                candidate = (end(t) + 1).div_ceil(size) * size;
                continue 'search;
            }
        }
        let addr = Ipv4Addr::from(u32::try_from(candidate).ok()?);
        return Ipv4Net::new(addr, prefix).ok();
    }
    None
}

/// Gives every valid app a range. Order: apps keeping their previous range
/// (lowest `namespace/name` first), then new explicit ranges, then
/// allocations from the pool; `reserved` ranges (held by apps planned
/// elsewhere) are taken before all of them. Returns the ranges and one error per app that
/// got none.
pub fn assign_ranges<'a>(
    requests: &'a BTreeMap<ObjectKey, RangeRequest>,
    config: &PlannerConfig,
    reserved: &'a [(Ipv4Net, ObjectKey)],
) -> (BTreeMap<ObjectKey, Ipv4Net>, Vec<(ObjectKey, PlanError)>) {
    let mut taken = Taken::new();
    for (net, key) in reserved {
        if taken.find(net).is_none() {
            taken.insert(*net, key);
        }
    }
    let mut errored: BTreeSet<&ObjectKey> = BTreeSet::new();
    let mut ranges = BTreeMap::new();
    let mut errors = Vec::new();
    let conflict = |key: &ObjectKey, net: &Ipv4Net, other: &ObjectKey, other_net: &Ipv4Net| {
        PlanError::new(
            ErrorKind::Conflict,
            object_name("MeshApp", key),
            "spec.addressSpace",
            "AddressSpaceConflict",
            format!("{net} overlaps {other_net} of MeshApp {other}"),
        )
    };

    // 1. Incumbents keep what they had.
    for (key, req) in requests {
        let Some(prev) = req.previous else { continue };
        if req.valid && req.explicit.is_some_and(|e| e != prev) {
            continue; // the user asked for another range: treated as new below
        }
        match taken.find(&prev) {
            Some((t, other)) => {
                if req.valid {
                    errored.insert(key);
                    errors.push((key.clone(), conflict(key, &prev, other, &t)));
                }
            }
            None => {
                taken.insert(prev, key);
                if req.valid {
                    ranges.insert(key.clone(), prev);
                }
            }
        }
    }
    // 2. New explicit ranges, lowest name first.
    for (key, req) in requests {
        let Some(explicit) = req.explicit else {
            continue;
        };
        if !req.valid || ranges.contains_key(key) || errored.contains(key) {
            continue;
        }
        match taken.find(&explicit) {
            Some((t, other)) => {
                errored.insert(key);
                errors.push((key.clone(), conflict(key, &explicit, other, &t)));
            }
            None => {
                taken.insert(explicit, key);
                ranges.insert(key.clone(), explicit);
            }
        }
    }
    // 3. Allocations from the pool.
    for (key, req) in requests {
        if !req.valid || req.explicit.is_some() || ranges.contains_key(key) {
            continue;
        }
        if errored.contains(key) {
            continue;
        }
        match taken.allocate(&config.pool, config.app_prefix_len) {
            Some(net) => {
                taken.insert(net, key);
                ranges.insert(key.clone(), net);
            }
            None => errors.push((
                key.clone(),
                PlanError::new(
                    ErrorKind::Exhausted,
                    object_name("MeshApp", key),
                    "spec.addressSpace",
                    "PoolExhausted",
                    format!(
                        "no free /{} left in the pool {}; set spec.addressSpace explicitly",
                        config.app_prefix_len, config.pool
                    ),
                ),
            )),
        }
    }
    (ranges, errors)
}

/// Index of `slice` inside `range`, if it is a proper `/npl` slice of it.
fn slice_index(range: &Ipv4Net, npl: u8, slice: &Ipv4Net) -> Option<u64> {
    if slice.prefix_len() != npl || slice.trunc() != *slice || !range.contains(slice) {
        return None;
    }
    Some((start(slice) - start(range)) >> (32 - npl))
}

fn slice_at(range: &Ipv4Net, npl: u8, index: u64) -> Option<Ipv4Net> {
    let base = start(range) + (index << (32 - npl));
    Ipv4Net::new(Ipv4Addr::from(u32::try_from(base).ok()?), npl).ok()
}

/// Gives each node (in order) a `/npl` slice of `range`: its previous slice
/// when still valid and free, otherwise the lowest free one. Nodes that get
/// none (the range is full) are returned second.
pub fn assign_slices(
    range: &Ipv4Net,
    npl: u8,
    nodes: &[String],
    previous: &BTreeMap<String, Ipv4Net>,
) -> (BTreeMap<String, Ipv4Net>, Vec<String>) {
    let mut used: BTreeSet<u64> = BTreeSet::new();
    let mut slices = BTreeMap::new();
    if npl < range.prefix_len() || npl > 32 {
        return (slices, nodes.to_vec());
    }
    for node in nodes {
        let Some(idx) = previous.get(node).and_then(|p| slice_index(range, npl, p)) else {
            continue;
        };
        if used.insert(idx) {
            if let Some(s) = slice_at(range, npl, idx) {
                slices.insert(node.clone(), s);
            }
        }
    }
    let count = 1u64 << (npl - range.prefix_len());
    let mut full = Vec::new();
    let mut next = 0u64;
    for node in nodes {
        if slices.contains_key(node) {
            continue;
        }
        while used.contains(&next) {
            next += 1;
        }
        match (next < count).then(|| slice_at(range, npl, next)).flatten() {
            Some(s) => {
                used.insert(next);
                slices.insert(node.clone(), s);
            }
            None => full.push(node.clone()),
        }
    }
    (slices, full)
}

/// First usable address of a slice, written with the app range's prefix
/// (`10.100.3.1/16`): what the daemon puts on the interface.
pub fn tunnel_address(slice: &Ipv4Net, range: &Ipv4Net) -> String {
    let first = u32::from(slice.network()).saturating_add(1);
    format!("{}/{}", Ipv4Addr::from(first), range.prefix_len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn allocation_skips_taken_ranges() {
        let pool = net("10.0.0.0/8");
        assert_eq!(allocate(&pool, 16, &[]), Some(net("10.0.0.0/16")));
        assert_eq!(
            allocate(&pool, 16, &[net("10.0.0.0/15"), net("10.2.128.0/24")]),
            Some(net("10.3.0.0/16"))
        );
        assert_eq!(
            allocate(&net("10.0.0.0/16"), 16, &[net("10.0.0.0/8")]),
            None
        );
        assert_eq!(allocate(&net("10.0.0.0/16"), 8, &[]), None);
    }

    #[test]
    fn slices_are_sticky_and_fill_lowest_gap() {
        let range = net("10.1.0.0/16");
        let prev: BTreeMap<String, Ipv4Net> = [("b".to_string(), net("10.1.0.0/24"))].into();
        let nodes = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let (s, full) = assign_slices(&range, 24, &nodes, &prev);
        assert!(full.is_empty());
        assert_eq!(s["b"], net("10.1.0.0/24"));
        assert_eq!(s["a"], net("10.1.1.0/24"));
        assert_eq!(s["c"], net("10.1.2.0/24"));
        assert_eq!(tunnel_address(&s["c"], &range), "10.1.2.1/16");
    }

    #[test]
    fn slice_exhaustion_reports_the_nodes_left_out() {
        let range = net("10.1.0.0/29");
        let nodes = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let (s, full) = assign_slices(&range, 30, &nodes, &BTreeMap::new());
        assert_eq!(s.len(), 2);
        assert_eq!(full, vec!["c".to_string()]);
    }

    proptest::proptest! {
        /// Successive pool allocations through the index (with its cursor)
        /// give exactly what a scan of every taken range gives.
        #[test]
        fn indexed_allocation_equals_a_full_scan(
            explicit in proptest::collection::vec((0u32..64, 18u8..26), 0..24),
            count in 1usize..40,
            prefix in 18u8..24,
        ) {
            let pool = net("10.0.0.0/16");
            let keys: Vec<ObjectKey> = (0..explicit.len() + count)
                .map(|i| ObjectKey::new("ns", format!("a{i}")))
                .collect();
            let mut taken = Taken::new();
            let mut plain: Vec<Ipv4Net> = Vec::new();
            for (i, (block, len)) in explicit.iter().enumerate() {
                let n = Ipv4Net::new(Ipv4Addr::from(0x0a00_0000u32 + (block << 10)), *len)
                    .unwrap()
                    .trunc();
                if taken.find(&n).is_none() {
                    proptest::prop_assert!(!plain.iter().any(|t| overlaps(t, &n)));
                    taken.insert(n, &keys[i]);
                    plain.push(n);
                } else {
                    proptest::prop_assert!(plain.iter().any(|t| overlaps(t, &n)));
                }
            }
            for k in 0..count {
                let want = allocate(&pool, prefix, &plain);
                let got = taken.allocate(&pool, prefix);
                proptest::prop_assert_eq!(want, got);
                if let Some(n) = got {
                    taken.insert(n, &keys[explicit.len() + k]);
                    plain.push(n);
                }
            }
        }
    }
}
