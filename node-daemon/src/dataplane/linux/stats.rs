//! Traffic figures per app and per peer: packets through the tunnel with
//! each peer (nftables counters) and open connections (connection tracking),
//! both read inside the app netns.
//!
//! Why nftables + conntrack and not eBPF: what is missing from WireGuard's
//! own figures is packets per peer and connections, and the kernel already
//! observes both. Every packet to or from a peer crosses the app's
//! WireGuard interface in the app netns, and WireGuard itself guarantees
//! the mapping to a peer (it routes by destination over the peers' allowed
//! IPs and drops what arrives from a peer with a source outside them), so
//! one counter per peer and direction keyed on the interface and the peer's
//! ranges counts exactly that peer's packets. Connection tracking already
//! keeps every flow of the netns. eBPF (aya, programs built with clang) is
//! possible on this kernel (`CONFIG_BPF_SYSCALL`, bpffs) but would add a
//! clang/BPF toolchain to every build, a loader, pinned maps to survive
//! daemon restarts, and flow tables we would have to age ourselves, to
//! observe nothing these two do not. Policy drops are counted by the policy
//! table itself (see [`super::nft`]).
//!
//! Layout (`table ip weft_stats`, one per app netns, apart from the policy
//! table so neither rewrite touches the other):
//! ```text
//! chain rx (hook prerouting, priority -150: after conntrack, before policy)
//!   ct state new counter                         comment "weft-stats:<digest>:<rules>"
//!   iifname "<wg>" jump peers_rx
//! chain peers_rx
//!   ip saddr { <peer ranges> } counter return    comment "<peer public key>"
//! chain tx (hook postrouting, priority 150: what actually leaves, after policy)
//!   oifname "<wg>" jump peers_tx
//! chain peers_tx
//!   ip daddr { <peer ranges> } counter return    comment "<peer public key>"
//! ```
//! Rules per peer are evaluated in order, only for packets of the tunnel.
//! The marker rule's `ct` expression is also what makes the kernel track
//! connections in this netns at all (conntrack is enabled per netns on
//! first use). Packets are inner IP packets: WireGuard's handshakes and
//! keepalives never cross the interface. The whole table is replaced in
//! one transaction when the peer set changes, which restarts its counters.
//!
//! Active connections come from `/proc/thread-self/net/nf_conntrack` (the
//! calling thread's netns): an entry counts once it has seen a reply and,
//! for TCP, while it is ESTABLISHED; ICMP exchanges (pings) are not
//! connections and never count. A peer's connections are those whose
//! other end lies in the peer's ranges. Without that file (a kernel built
//! without `NF_CONNTRACK_PROCFS`) only the netns total is known, from
//! `nf_conntrack_count` (every tracked entry, closing ones included).
//! That file walks the kernel's whole connection table, shared by every
//! netns, so with many apps it is read only when the marker rule saw a
//! connection start or a peer's packets moved, and at least every
//! [`CONNTRACK_MAX_AGE`] (connections that time out send nothing).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use anyhow::{anyhow, Context, Result};
use ipnet::Ipv4Net;
use serde_json::{json, Value};

use super::nftread::RuleRead;
use crate::dataplane::{AppTraffic, PeerTraffic, TrafficSpec};

/// Table name (family `ip`).
pub const TABLE: &str = "weft_stats";
/// Comment prefix of the marker rule.
const MARKER: &str = "weft-stats:";

/// Stable digest of what is counted (16 hex digits of SHA-256).
pub fn digest(spec: &TrafficSpec) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(spec.interface.as_bytes());
    for (k, nets) in &spec.peers {
        h.update(b"\n");
        h.update(k.as_bytes());
        for n in nets {
            h.update(b" ");
            h.update(n.to_string().as_bytes());
        }
    }
    crate::keys::hex(&h.finalize()[..8])
}

fn set_of(nets: &[Ipv4Net]) -> Value {
    let items: Vec<Value> = Ipv4Net::aggregate(&nets.to_vec())
        .iter()
        .map(|n| json!({"prefix": {"addr": n.addr().to_string(), "len": n.prefix_len()}}))
        .collect();
    json!({"set": items})
}

/// The nft JSON commands that replace the table, as one transaction. Pure.
pub fn render(spec: &TrafficSpec) -> Value {
    let table = json!({"table": {"family": "ip", "name": TABLE}});
    let chain = |name: &str, hook: Option<(&str, i32)>| {
        let mut c = json!({"family": "ip", "table": TABLE, "name": name});
        if let Some((hook, prio)) = hook {
            c["type"] = json!("filter");
            c["hook"] = json!(hook);
            c["prio"] = json!(prio);
            c["policy"] = json!("accept");
        }
        json!({"add": {"chain": c}})
    };
    let rule = |chain: &str, expr: Vec<Value>, comment: Option<String>| {
        let mut r = json!({"family": "ip", "table": TABLE, "chain": chain, "expr": expr});
        if let Some(c) = comment {
            r["comment"] = json!(c);
        }
        json!({"add": {"rule": r}})
    };
    let counter = || json!({"counter": {"packets": 0, "bytes": 0}});
    let meta = |key: &str| json!({"match": {"op": "==", "left": {"meta": {"key": key}}, "right": spec.interface}});
    let peers: Vec<(&String, &Vec<Ipv4Net>)> =
        spec.peers.iter().filter(|(_, n)| !n.is_empty()).collect();
    let rules = 3 + 2 * peers.len();
    let mut cmds = vec![
        json!({"add": table.clone()}),
        json!({"delete": table.clone()}),
        json!({"add": table}),
        chain("rx", Some(("prerouting", -150))),
        chain("peers_rx", None),
        chain("tx", Some(("postrouting", 150))),
        chain("peers_tx", None),
        rule(
            "rx",
            vec![
                json!({"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "new"}}),
                counter(),
            ],
            Some(format!("{MARKER}{}:{rules}", digest(spec))),
        ),
        rule(
            "rx",
            vec![meta("iifname"), json!({"jump": {"target": "peers_rx"}})],
            None,
        ),
        rule(
            "tx",
            vec![meta("oifname"), json!({"jump": {"target": "peers_tx"}})],
            None,
        ),
    ];
    for (chain_name, field) in [("peers_rx", "saddr"), ("peers_tx", "daddr")] {
        for (key, nets) in &peers {
            cmds.push(rule(
                chain_name,
                vec![
                    json!({"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": field}}, "right": set_of(nets)}}),
                    counter(),
                    json!({"return": null}),
                ],
                Some(key.to_string()),
            ));
        }
    }
    json!({"nftables": cmds})
}

/// What a listing of the table says: the marker's digest ("drift" when
/// rules were added or removed by hand) and each peer's packets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    /// Digest from the marker rule.
    pub digest: String,
    /// Per peer public key: (rx packets, tx packets).
    pub packets: BTreeMap<String, (u64, u64)>,
    /// Connections the netns has seen start (the marker rule's `ct state
    /// new` counter).
    pub new_connections: u64,
}

/// Parses `nft -j list table ip weft_stats`. Pure.
pub fn parse_listing(rules: &[RuleRead]) -> Listing {
    let mut out = Listing::default();
    let mut marker: Option<(String, usize)> = None;
    let n = rules.len();
    for r in rules {
        let packets = r.packets;
        let comment = r.comment.as_str();
        if let Some(rest) = comment.strip_prefix(MARKER) {
            if let Some((d, k)) = rest.rsplit_once(':') {
                marker = k.parse().ok().map(|k| (d.to_string(), k));
            }
            out.new_connections = packets;
        } else if !comment.is_empty() {
            let e = out.packets.entry(comment.to_string()).or_default();
            match r.chain.as_str() {
                "peers_rx" => e.0 += packets,
                "peers_tx" => e.1 += packets,
                _ => {}
            }
        }
    }
    out.digest = match marker {
        Some((d, k)) if k == n => d,
        _ => "drift".to_string(),
    };
    out
}

/// Replaces the table in the calling thread's netns, atomically.
pub fn apply(spec: &TrafficSpec) -> Result<()> {
    super::nft::run_batch(render(spec), "the traffic counters")
}

/// Lists the table in the calling thread's netns; `None` when it is absent.
pub fn read(rt: &tokio::runtime::Runtime) -> Result<Option<Listing>> {
    Ok(super::nftread::rules(rt, TABLE, None)?.map(|r| parse_listing(&r)))
}

/// One connection-tracking entry: its original direction's addresses and
/// whether it counts as an open connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conn {
    /// Original source.
    pub src: Ipv4Addr,
    /// Original destination.
    pub dst: Ipv4Addr,
    /// Replied, not ICMP and, for TCP, ESTABLISHED.
    pub active: bool,
}

/// Parses `/proc/net/nf_conntrack` (IPv4 entries only). Pure.
pub fn parse_conntrack(text: &str) -> Vec<Conn> {
    text.lines()
        .filter_map(|l| {
            let t: Vec<&str> = l.split_whitespace().collect();
            if t.first() != Some(&"ipv4") || t.len() < 5 {
                return None;
            }
            let field = |k: &str| {
                t.iter()
                    .find_map(|x| x.strip_prefix(k))
                    .and_then(|v| v.parse::<Ipv4Addr>().ok())
            };
            let replied = !t.contains(&"[UNREPLIED]");
            // `ipv4 2 tcp 6 <timeout> <STATE> src=...`
            let open = match t[2] {
                "tcp" => t.get(5) == Some(&"ESTABLISHED"),
                "icmp" => false,
                _ => true,
            };
            Some(Conn {
                src: field("src=")?,
                dst: field("dst=")?,
                active: replied && open,
            })
        })
        .collect()
}

/// Active connections of the netns and of each peer (by its ranges). Pure.
pub fn count_connections(conns: &[Conn], spec: &TrafficSpec) -> (u64, BTreeMap<String, u64>) {
    let mut per_peer: BTreeMap<String, u64> = spec.peers.keys().map(|k| (k.clone(), 0)).collect();
    let mut total = 0;
    for c in conns.iter().filter(|c| c.active) {
        total += 1;
        let peer = spec.peers.iter().find(|(_, nets)| {
            nets.iter()
                .any(|n| n.contains(&c.src) || n.contains(&c.dst))
        });
        if let Some((k, _)) = peer {
            *per_peer.entry(k.clone()).or_default() += 1;
        }
    }
    (total, per_peer)
}

/// Active connections in the calling thread's netns, overall and per peer.
fn connections(spec: &TrafficSpec) -> Result<(Option<u64>, BTreeMap<String, u64>)> {
    // The netns' own entry count is O(1) (the listing walks every netns'
    // entries): nothing tracked, nothing to list. Like every /proc/sys/net
    // file it belongs to the netns of the thread that opens it.
    let tracked = std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    if tracked == Some(0) {
        return Ok((Some(0), BTreeMap::new()));
    }
    // `/proc/net` is the netns of the process's main thread; the calling
    // thread may have switched to the app netns.
    match std::fs::read_to_string("/proc/thread-self/net/nf_conntrack") {
        Ok(text) => {
            let (total, per_peer) = count_connections(&parse_conntrack(&text), spec);
            Ok((Some(total), per_peer))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((tracked, BTreeMap::new())),
        Err(e) => Err(e).context("read nf_conntrack"),
    }
}

/// How stale the connection counts of an idle netns may get. Reading
/// conntrack walks the kernel's whole connection table (it is shared by
/// every netns and filtered per netns), so it is read again only when a
/// connection started or a peer's packets moved since the last read, or
/// after this long (connections that end by timing out send nothing).
pub const CONNTRACK_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(30);

/// The last full read of one app netns.
#[derive(Clone, Debug)]
struct Read {
    at: std::time::Instant,
    digest: String,
    traffic: AppTraffic,
    /// The counters the connection counts were read with, and when.
    conntrack: (ConntrackKey, std::time::Instant),
    /// Packets over the netns' links just before this read (see
    /// [`super::changes::Subscription::packets`]).
    packets: Option<u64>,
}

/// What must be unchanged for connection counts to stand: connections
/// started, and each peer's packets.
type ConntrackKey = (u64, BTreeMap<String, (u64, u64)>);

/// Whether counts read at `at` with `then` still stand for `now`. Pure.
pub fn conntrack_still_valid(
    then: &ConntrackKey,
    at: std::time::Instant,
    now: &ConntrackKey,
    max_age: std::time::Duration,
) -> bool {
    then == now && at.elapsed() < max_age
}

/// Keeps each app netns' counting rules as wanted and caches reads: the
/// table is listed (and conntrack read) at most once per `interval` while
/// what is counted stays the same. In between a pass costs no syscall at
/// all; a table deleted by hand is recreated at the next full read. When
/// `interval` is up but no packet crossed a link of the netns since the
/// last read (one link dump tells), the counters cannot have moved: the
/// read stands, unless connections it counted may have timed out since.
#[derive(Debug)]
pub struct Stats {
    interval: std::time::Duration,
    reads: BTreeMap<String, Read>,
}

impl Stats {
    /// Reads at most once per `interval` per netns.
    pub fn new(interval: std::time::Duration) -> Self {
        Stats {
            interval,
            reads: BTreeMap::new(),
        }
    }

    /// Forgets a netns (it was deleted).
    pub fn forget(&mut self, netns: &str) {
        self.reads.remove(netns);
    }

    /// Figures of `netns` (entered with `within`), writing the table first
    /// when it does not count what `want` says.
    pub fn traffic(
        &mut self,
        netns: &str,
        want: &TrafficSpec,
        rt: &tokio::runtime::Runtime,
        packets: impl Fn() -> Option<u64>,
        within: impl Fn(&dyn Fn() -> Result<AppTraffic>) -> Result<AppTraffic>,
    ) -> Result<AppTraffic> {
        let d = digest(want);
        let mut probe = None;
        if let Some(r) = self.reads.get_mut(netns) {
            if r.digest == d {
                let fresh = r.at.elapsed() < self.interval;
                if !fresh {
                    probe = packets();
                }
                if fresh || still_stands(r, probe) {
                    if !fresh {
                        r.at = std::time::Instant::now();
                    }
                    let mut t = r.traffic.clone();
                    t.wrote = false;
                    return Ok(t);
                }
            }
        }
        let last = self
            .reads
            .get(netns)
            .filter(|r| r.digest == d)
            .map(|r| (r.conntrack.clone(), r.traffic.clone()));
        // Probed before the read: packets moving during it show up as a
        // difference next time, which only costs one read more.
        let probe = probe.or_else(&packets);
        let conntrack = std::cell::RefCell::new(None);
        let traffic = within(&|| {
            let mut listing = read(rt)?;
            let mut wrote = false;
            if listing.as_ref().map(|l| l.digest.as_str()) != Some(d.as_str()) {
                apply(want)?;
                wrote = true;
                listing = read(rt)?;
            }
            let listing = listing.ok_or_else(|| anyhow!("table {TABLE} missing after write"))?;
            let key: ConntrackKey = (listing.new_connections, listing.packets.clone());
            let (active, per_peer, at) = match &last {
                Some(((then, at), t))
                    if !wrote && conntrack_still_valid(then, *at, &key, CONNTRACK_MAX_AGE) =>
                {
                    let per_peer = t
                        .peers
                        .iter()
                        .map(|(k, p)| (k.clone(), p.active_connections))
                        .collect();
                    (t.active_connections, per_peer, *at)
                }
                _ => {
                    let (a, p) = connections(want)?;
                    (a, p, std::time::Instant::now())
                }
            };
            *conntrack.borrow_mut() = Some((key, at));
            let peers = want
                .peers
                .keys()
                .map(|k| {
                    let (rx, tx) = listing.packets.get(k).copied().unwrap_or_default();
                    let p = PeerTraffic {
                        rx_packets: rx,
                        tx_packets: tx,
                        active_connections: per_peer.get(k).copied().unwrap_or(0),
                    };
                    (k.clone(), p)
                })
                .collect();
            Ok(AppTraffic {
                peers,
                active_connections: active,
                wrote,
            })
        })?;
        // A `within` that did not run the read (the unit tests') leaves no
        // conntrack read behind: the next read makes one.
        let conntrack = conntrack.into_inner().unwrap_or_else(|| {
            let stale = std::time::Instant::now()
                .checked_sub(CONNTRACK_MAX_AGE)
                .unwrap_or_else(std::time::Instant::now);
            (ConntrackKey::default(), stale)
        });
        self.reads.insert(
            netns.to_string(),
            Read {
                at: std::time::Instant::now(),
                digest: d,
                traffic: traffic.clone(),
                conntrack,
                packets: probe,
            },
        );
        Ok(traffic)
    }
}

/// Whether read `r` still stands with `packets` over the netns' links now:
/// no packet moved since (so no counter did), and no connection it counted
/// can have timed out unseen.
fn still_stands(r: &Read, packets: Option<u64>) -> bool {
    let quiet = packets.is_some() && packets == r.packets;
    let no_connections = r.traffic.active_connections.unwrap_or(0) == 0;
    quiet && (no_connections || r.conntrack.1.elapsed() < CONNTRACK_MAX_AGE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::linux::nftread::from_json;

    fn spec() -> TrafficSpec {
        TrafficSpec {
            interface: "wfabc".into(),
            peers: [
                ("PK1".to_string(), vec!["10.1.2.0/24".parse().unwrap()]),
                (
                    "PK2".to_string(),
                    vec![
                        "10.1.3.0/24".parse().unwrap(),
                        "10.1.3.8/29".parse().unwrap(),
                    ],
                ),
            ]
            .into_iter()
            .collect(),
        }
    }

    /// The rendered rules shaped like a listing, with counters set.
    fn listing_of(doc: &Value, packets: impl Fn(&str, &str) -> u64) -> Value {
        let rules: Vec<Value> = doc["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["add"].get("rule").cloned())
            .map(|mut r| {
                let chain = r["chain"].as_str().unwrap().to_string();
                let comment = r["comment"].as_str().unwrap_or("").to_string();
                for e in r["expr"].as_array_mut().unwrap() {
                    if let Some(c) = e.get_mut("counter") {
                        c["packets"] = json!(packets(&chain, &comment));
                    }
                }
                json!({ "rule": r })
            })
            .collect();
        json!({ "nftables": rules })
    }

    #[test]
    fn render_fits_the_crate_schema_and_names_every_peer() {
        let doc = render(&spec());
        let nft: nftables::schema::Nftables<'_> = serde_json::from_value(doc.clone()).unwrap();
        let cmds = doc["nftables"].as_array().unwrap();
        // add+delete+add table, 4 chains, marker + 2 jumps + 2 peers x 2.
        assert_eq!(cmds.len(), 3 + 4 + 3 + 4);
        assert_eq!(nft.objects.len(), cmds.len());
        let text = doc.to_string();
        // Overlapping ranges of one peer are merged (nft refuses overlaps).
        assert!(!text.contains("10.1.3.8"), "{text}");
        assert!(text.contains(&format!("weft-stats:{}:7", digest(&spec()))));
    }

    #[test]
    fn digest_follows_interface_peers_and_ranges() {
        let mut other = spec();
        assert_eq!(digest(&spec()), digest(&other));
        other.interface = "wfdef".into();
        assert_ne!(digest(&spec()), digest(&other));
        let mut other = spec();
        other.peers.get_mut("PK1").unwrap()[0] = "10.1.4.0/24".parse().unwrap();
        assert_ne!(digest(&spec()), digest(&other));
    }

    #[test]
    fn listing_gives_per_peer_packets_and_spots_drift() {
        let doc = render(&spec());
        let v = listing_of(&doc, |chain, comment| match (chain, comment) {
            ("peers_rx", "PK1") => 5,
            ("peers_tx", "PK1") => 6,
            ("peers_tx", "PK2") => 9,
            ("peers_rx", "PK2") => 0,
            _ => 100, // marker and jumps: not peer figures
        });
        let l = parse_listing(&from_json(&v));
        assert_eq!(l.digest, digest(&spec()));
        assert_eq!(
            l.new_connections, 100,
            "the marker rule counts new connections"
        );
        assert_eq!(l.packets["PK1"], (5, 6));
        assert_eq!(l.packets["PK2"], (0, 9));
        assert_eq!(l.packets.len(), 2);
        let mut fewer = v.clone();
        fewer["nftables"].as_array_mut().unwrap().pop();
        assert_eq!(parse_listing(&from_json(&fewer)).digest, "drift");
        assert_eq!(parse_listing(&[]).digest, "drift");
    }

    const CONNTRACK: &str = "\
ipv4     2 tcp      6 431999 ESTABLISHED src=10.1.1.2 dst=10.1.2.2 sport=40000 dport=80 src=10.1.2.2 dst=10.1.1.2 sport=80 dport=40000 [ASSURED] mark=0 zone=0 use=2
ipv4     2 tcp      6 118 TIME_WAIT src=10.1.1.2 dst=10.1.2.2 sport=40001 dport=80 src=10.1.2.2 dst=10.1.1.2 sport=80 dport=40001 [ASSURED] mark=0 zone=0 use=2
ipv4     2 tcp      6 55 SYN_SENT src=10.1.1.2 dst=10.1.3.2 sport=40002 dport=80 [UNREPLIED] src=10.1.3.2 dst=10.1.1.2 sport=80 dport=40002 mark=0 zone=0 use=2
ipv4     2 udp      17 29 src=10.1.1.1 dst=10.1.2.1 sport=5000 dport=9 [UNREPLIED] src=10.1.2.1 dst=10.1.1.1 sport=9 dport=5000 mark=0 zone=0 use=2
ipv4     2 icmp     1 29 src=10.1.3.9 dst=10.1.1.2 type=8 code=0 id=7 src=10.1.1.2 dst=10.1.3.9 type=0 code=0 id=7 mark=0 zone=0 use=2
ipv4     2 udp      17 170 src=10.1.1.2 dst=10.1.1.3 sport=53 dport=53 src=10.1.1.3 dst=10.1.1.2 sport=53 dport=53 [ASSURED] mark=0 zone=0 use=2
ipv6     10 udp     17 20 src=fe80::1 dst=ff02::1 sport=1 dport=2 [UNREPLIED] src=ff02::1 dst=fe80::1 sport=2 dport=1 mark=0 zone=0 use=2
";

    #[test]
    fn conntrack_entries_count_when_replied_and_not_closing() {
        let conns = parse_conntrack(CONNTRACK);
        assert_eq!(conns.len(), 6, "ipv6 left out");
        let active: Vec<bool> = conns.iter().map(|c| c.active).collect();
        assert_eq!(active, [true, false, false, false, false, true]);
        let (total, per_peer) = count_connections(&conns, &spec());
        assert_eq!(total, 2, "established TCP and replied local UDP");
        assert_eq!(per_peer["PK1"], 1, "the established connection");
        assert_eq!(per_peer["PK2"], 0, "a ping is no connection");
    }

    #[test]
    fn connection_counts_stand_while_nothing_started_or_moved_and_not_too_long() {
        let key = |new: u64, rx: u64| -> ConntrackKey {
            (new, [("PK1".to_string(), (rx, 0))].into_iter().collect())
        };
        let now = std::time::Instant::now();
        let age = std::time::Duration::from_secs(30);
        assert!(conntrack_still_valid(&key(3, 10), now, &key(3, 10), age));
        assert!(
            !conntrack_still_valid(&key(3, 10), now, &key(4, 10), age),
            "a connection started"
        );
        assert!(
            !conntrack_still_valid(&key(3, 10), now, &key(3, 11), age),
            "a peer's packets moved"
        );
        let old = now - std::time::Duration::from_secs(31);
        assert!(
            !conntrack_still_valid(&key(3, 10), old, &key(3, 10), age),
            "too old: connections may have timed out"
        );
    }

    #[test]
    fn a_cached_read_costs_nothing_until_the_spec_changes() {
        let mut s = Stats::new(std::time::Duration::from_secs(3600));
        let calls = std::cell::Cell::new(0);
        let within = |f: &dyn Fn() -> Result<AppTraffic>| {
            calls.set(calls.get() + 1);
            let _ = f; // never enter a netns in a unit test
            Ok(AppTraffic {
                wrote: true,
                ..Default::default()
            })
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert!(
            s.traffic("ns", &spec(), &rt, || None, within)
                .unwrap()
                .wrote
        );
        assert!(
            !s.traffic("ns", &spec(), &rt, || None, within)
                .unwrap()
                .wrote,
            "cached"
        );
        assert_eq!(calls.get(), 1);
        let mut other = spec();
        other.peers.remove("PK2");
        s.traffic("ns", &other, &rt, || None, within).unwrap();
        assert_eq!(calls.get(), 2, "a new peer set is written at once");
        s.forget("ns");
        s.traffic("ns", &other, &rt, || None, within).unwrap();
        assert_eq!(calls.get(), 3);
    }

    #[test]
    fn an_expired_read_stands_while_no_packet_moved_in_the_netns() {
        let mut s = Stats::new(std::time::Duration::ZERO);
        let calls = std::cell::Cell::new(0);
        let within = |f: &dyn Fn() -> Result<AppTraffic>| {
            calls.set(calls.get() + 1);
            let _ = f;
            Ok(AppTraffic {
                active_connections: Some(0),
                ..Default::default()
            })
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let packets = std::cell::Cell::new(Some(7u64));
        let probe = || packets.get();
        s.traffic("ns", &spec(), &rt, probe, within).unwrap();
        s.traffic("ns", &spec(), &rt, probe, within).unwrap();
        assert_eq!(calls.get(), 1, "no packet since the read: it stands");
        packets.set(Some(8));
        s.traffic("ns", &spec(), &rt, probe, within).unwrap();
        assert_eq!(calls.get(), 2, "packets moved: read again");
        packets.set(None);
        s.traffic("ns", &spec(), &rt, probe, within).unwrap();
        s.traffic("ns", &spec(), &rt, probe, within).unwrap();
        assert_eq!(calls.get(), 4, "no way to tell: every expired read is made");
    }
}
