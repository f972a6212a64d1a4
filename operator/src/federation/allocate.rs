//! The hub's allocator: one range per shared app, and blocks of it per
//! member, so two members can never hand out the same node slice even when
//! they are configured alike. Pure: records and the previous allocations
//! in, allocations out.
//!
//! Only the hub allocates, so there is no race between members to settle.
//! Everything is sticky: an app keeps its range and a member its blocks
//! while it has a record, and a member that already uses some slices (an
//! app that was local before it was shared) is granted the blocks that hold
//! them when they are free. A disagreement is reported, never resolved by
//! renumbering what works.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::Ipv4Net;
use weft_api::federation::{HubAllocationSpec, HubBlock, HubConflict, SiteRecordSpec};
use weft_api::meshhub::HubMember;

/// What the allocator knows of the hub.
#[derive(Clone, Debug)]
pub struct HubSettings {
    /// Members and what each exports.
    pub members: Vec<HubMember>,
    /// Pool of app ranges nobody named.
    pub pool: Ipv4Net,
    /// Prefix length of ranges taken from the pool.
    pub app_prefix_len: u8,
    /// Node slices per block (a power of two).
    pub block_slices: u32,
}

fn start(n: &Ipv4Net) -> u64 {
    u64::from(u32::from(n.network()))
}

fn end(n: &Ipv4Net) -> u64 {
    u64::from(u32::from(n.broadcast()))
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    start(a) <= end(b) && start(b) <= end(a)
}

/// The `index`th block of `/prefix` in `range`.
fn block_at(range: &Ipv4Net, prefix: u8, index: u64) -> Option<Ipv4Net> {
    let size = 1u64 << (32 - prefix);
    let first = start(range) + index * size;
    if first + size - 1 > end(range) {
        return None;
    }
    Ipv4Net::new(u32::try_from(first).ok()?.into(), prefix).ok()
}

/// Prefix length of a block of `slices` node slices of `/npl`, within `range`.
pub fn block_prefix(range: &Ipv4Net, npl: u8, slices: u32) -> u8 {
    let bits = u8::try_from(slices.max(1).trailing_zeros()).unwrap_or(0);
    npl.saturating_sub(bits).max(range.prefix_len())
}

/// Allocations for every app some member exports and has a record of.
/// `records` are keyed by (member, app); those of an app the member does
/// not export are ignored.
pub fn allocate(
    hub: &HubSettings,
    records: &BTreeMap<(String, String), SiteRecordSpec>,
    previous: &BTreeMap<String, HubAllocationSpec>,
) -> BTreeMap<String, HubAllocationSpec> {
    let exports: BTreeSet<(&str, &str)> = hub
        .members
        .iter()
        .flat_map(|m| m.exports.iter().map(|a| (m.site.as_str(), a.as_str())))
        .collect();
    // app → member → record, members in name order.
    let mut by_app: BTreeMap<&str, BTreeMap<&str, &SiteRecordSpec>> = BTreeMap::new();
    for ((site, app), r) in records {
        if exports.contains(&(site.as_str(), app.as_str())) && r.site == *site && r.app == *app {
            by_app.entry(app).or_default().insert(site, r);
        }
    }

    // Ranges: the ones held first, so a newcomer never takes them.
    let mut taken: Vec<(Ipv4Net, &str)> = Vec::new();
    let mut out: BTreeMap<String, HubAllocationSpec> = BTreeMap::new();
    for app in by_app.keys() {
        if let Some(range) = previous
            .get(*app)
            .and_then(|p| p.address_space.as_deref()?.parse::<Ipv4Net>().ok())
        {
            if !taken.iter().any(|(t, _)| overlaps(t, &range)) {
                taken.push((range, app));
            }
        }
    }
    for (app, members) in &by_app {
        let prev = previous.get(*app);
        let mut conflicts: BTreeSet<HubConflict> = BTreeSet::new();
        let held = taken.iter().find(|(_, a)| a == app).map(|(r, _)| *r);
        let range = held.or_else(|| {
            let named = choose_range(app, members, &taken, &mut conflicts);
            let r = named.or_else(|| pool_range(hub, &taken))?;
            taken.push((r, app));
            Some(r)
        });
        // Members whose own range differs from the one chosen.
        if let Some(r) = range {
            for (site, rec) in members {
                let theirs = rec.app_spec.address_space.as_deref();
                if rec.app_spec.explicit
                    && theirs.and_then(|t| t.parse::<Ipv4Net>().ok()) != Some(r)
                {
                    conflicts.insert(HubConflict {
                        site: (*site).to_string(),
                        field: "spec.addressSpace".into(),
                        message: format!(
                            "{} here, but the app's shared range is {r}{}",
                            theirs.unwrap_or("unset"),
                            agreeing(members, site, |x| x.app_spec.address_space.as_deref()
                                == Some(&r.to_string()))
                        ),
                    });
                }
            }
        }
        let npl = prev
            .map(|p| p.node_prefix_length)
            .or_else(|| {
                members
                    .values()
                    .next()
                    .map(|r| r.app_spec.node_prefix_length)
            })
            .unwrap_or(24);
        for (site, rec) in members {
            if rec.app_spec.node_prefix_length != npl {
                conflicts.insert(HubConflict {
                    site: (*site).to_string(),
                    field: "spec.nodePrefixLength".into(),
                    message: format!(
                        "/{} here, but the app's node slices are /{npl}{}",
                        rec.app_spec.node_prefix_length,
                        agreeing(members, site, |x| x.app_spec.node_prefix_length == npl)
                    ),
                });
            }
        }
        // Both sides hear of a disagreement: each member that agrees is
        // told which member differs, and in what.
        let odd: Vec<HubConflict> = conflicts.iter().cloned().collect();
        for c in &odd {
            for site in members.keys().filter(|s| **s != c.site) {
                if odd.iter().any(|o| o.site == *site && o.field == c.field) {
                    continue;
                }
                conflicts.insert(HubConflict {
                    site: (*site).to_string(),
                    field: c.field.clone(),
                    message: format!("site {} disagrees: {}", c.site, c.message),
                });
            }
        }
        let blocks = match range {
            Some(r) if npl >= r.prefix_len() && npl <= 32 => {
                let same_shape = prev.is_some_and(|p| {
                    p.address_space.as_deref() == Some(&r.to_string())
                        && p.node_prefix_length == npl
                });
                let kept: Vec<HubBlock> = if same_shape {
                    prev.map(|p| p.blocks.clone()).unwrap_or_default()
                } else {
                    Vec::new()
                };
                grant_blocks(hub, r, npl, members, kept, &mut conflicts)
            }
            Some(r) => {
                for site in members.keys() {
                    conflicts.insert(HubConflict {
                        site: (*site).to_string(),
                        field: "spec.nodePrefixLength".into(),
                        message: format!("/{npl} does not fit the app's range {r}"),
                    });
                }
                Vec::new()
            }
            None => {
                for site in members.keys() {
                    conflicts.insert(HubConflict {
                        site: (*site).to_string(),
                        field: "spec.addressSpace".into(),
                        message: format!("the hub's pool {} has no free range left", hub.pool),
                    });
                }
                Vec::new()
            }
        };
        out.insert(
            (*app).to_string(),
            HubAllocationSpec {
                app: (*app).to_string(),
                address_space: range.map(|r| r.to_string()),
                node_prefix_length: npl,
                blocks,
                conflicts: conflicts.into_iter().collect(),
            },
        );
    }
    out
}

/// ", as site x does" / ", as sites x, y do": who holds the shared value.
fn agreeing(
    members: &BTreeMap<&str, &SiteRecordSpec>,
    except: &str,
    agrees: impl Fn(&SiteRecordSpec) -> bool,
) -> String {
    let who: Vec<&str> = members
        .iter()
        .filter(|(s, r)| **s != except && agrees(r))
        .map(|(s, _)| *s)
        .collect();
    match who.as_slice() {
        [] => String::new(),
        [one] => format!(" (as site {one} has it)"),
        many => format!(" (as sites {} have it)", many.join(", ")),
    }
}

/// The range members name: the explicit one of the first member that has
/// one, else the first proposal (a range a member already uses). `None`
/// when nobody names one, or the one named overlaps another app's.
fn choose_range(
    app: &str,
    members: &BTreeMap<&str, &SiteRecordSpec>,
    taken: &[(Ipv4Net, &str)],
    conflicts: &mut BTreeSet<HubConflict>,
) -> Option<Ipv4Net> {
    let named = |explicit: bool| {
        members.iter().find_map(|(site, r)| {
            (r.app_spec.explicit == explicit)
                .then(|| r.app_spec.address_space.as_deref()?.parse::<Ipv4Net>().ok())
                .flatten()
                .map(|n| (*site, n))
        })
    };
    let (site, range) = named(true).or_else(|| named(false))?;
    if let Some((_, other)) = taken.iter().find(|(t, _)| overlaps(t, &range)) {
        conflicts.insert(HubConflict {
            site: site.to_string(),
            field: "spec.addressSpace".into(),
            message: format!("{range} overlaps the shared range of app {other}; {app} gets one from the hub's pool"),
        });
        return None;
    }
    Some(range)
}

/// The lowest free `/app_prefix_len` of the pool.
fn pool_range(hub: &HubSettings, taken: &[(Ipv4Net, &str)]) -> Option<Ipv4Net> {
    let prefix = hub.app_prefix_len.max(hub.pool.prefix_len());
    (0u64..)
        .map_while(|i| block_at(&hub.pool, prefix, i))
        .find(|c| !taken.iter().any(|(t, _)| overlaps(t, c)))
}

/// Each member's blocks: those it held, then those holding the slices it
/// already uses, then the lowest free ones, up to what it wants.
fn grant_blocks(
    hub: &HubSettings,
    range: Ipv4Net,
    npl: u8,
    members: &BTreeMap<&str, &SiteRecordSpec>,
    kept: Vec<HubBlock>,
    conflicts: &mut BTreeSet<HubConflict>,
) -> Vec<HubBlock> {
    let prefix = block_prefix(&range, npl, hub.block_slices);
    let count = 1u64 << (prefix - range.prefix_len());
    let index_of = |n: &Ipv4Net| (start(n) - start(&range)) >> (32 - prefix);
    let mut owner: BTreeMap<u64, &str> = BTreeMap::new();
    for b in &kept {
        let Ok(net) = b.cidr.parse::<Ipv4Net>() else {
            continue;
        };
        let Some(site) = members.keys().find(|s| **s == b.site) else {
            continue;
        };
        if net.prefix_len() == prefix && range.contains(&net) {
            owner.entry(index_of(&net)).or_insert(site);
        }
    }
    let granted = |owner: &BTreeMap<u64, &str>, site: &str| {
        owner.values().filter(|s| **s == site).count() as u64
    };
    for (site, rec) in members {
        // Slices a member already uses keep their blocks when free, even
        // beyond what it wants: nothing that works is renumbered.
        for node in &rec.nodes {
            let Ok(slice) = node.slice.parse::<Ipv4Net>() else {
                continue;
            };
            if range.contains(&slice) && slice.prefix_len() >= prefix {
                owner.entry(index_of(&slice)).or_insert(site);
            }
        }
    }
    let mut next = 0u64;
    for (site, rec) in members {
        let want = u64::from(rec.want_blocks);
        while granted(&owner, site) < want {
            while owner.contains_key(&next) {
                next += 1;
            }
            if next >= count {
                conflicts.insert(HubConflict {
                    site: (*site).to_string(),
                    field: "spec.addressSpace".into(),
                    message: format!(
                        "{range} has no free block of {} node slices left ({want} wanted, {} granted)",
                        hub.block_slices,
                        granted(&owner, site)
                    ),
                });
                break;
            }
            owner.insert(next, site);
        }
    }
    owner
        .into_iter()
        .filter_map(|(i, site)| {
            Some(HubBlock {
                site: site.to_string(),
                cidr: block_at(&range, prefix, i)?.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
