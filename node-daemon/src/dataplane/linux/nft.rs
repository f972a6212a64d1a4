//! MeshPolicy enforcement with nftables, inside the app netns.
//!
//! Why nftables (and not eBPF) for enforcement: every packet of a workload
//! crosses the FORWARD hook of its app netns, so one small table there sees
//! both directions of every flow; conntrack gives "replies always pass" for
//! free; a whole ruleset is replaced in ONE kernel transaction (`nft -f`
//! batch: add table, delete table, recreate), so there is never a moment
//! without rules; and per-rule counters come with it. Nothing is loaded when
//! an app has no policy (zero overhead), and the table is private to the app
//! netns: no other app, nor the node, is affected.
//!
//! Layout (`table ip weft`):
//! ```text
//! chain forward  (hook forward, policy accept)
//!   ct state established,related ct mark GEN counter accept  comment "weft:<digest>:<rules>"
//!   ct mark DENIED tcp reject with tcp reset / ct mark DENIED drop  comment "denied"
//!   ct state related accept                                  comment "stale:related"
//!   ct direction reply ip saddr { ingress-isolated } jump ingress_reply
//!   ct direction reply ip daddr { egress-isolated }  jump egress_reply
//!   ct direction reply ct mark set GEN accept                comment "admit"
//!   ip daddr { ingress-isolated } jump ingress
//!   ip saddr { egress-isolated }  jump egress
//!   ct mark set GEN                                          comment "admit"
//! chain ingress  (daddr is an isolated workload)
//!   ip daddr {local} ip saddr {peers} [l4proto] [dport] counter return  comment "<rule id>"
//!   ...
//!   ct state established tcp ct mark set DENIED reject with tcp reset  comment "drop:ingress"
//!   ct state established ct mark set DENIED drop             comment "drop:ingress"
//!   counter drop                                             comment "drop:ingress"
//! chain egress   (saddr is an isolated workload), mirrored
//! chain ingress_reply, egress_reply: the same rules with source and
//!   destination (and dport/sport) swapped
//! ```
//! GEN is derived from the ruleset's digest. Only flows admitted under the
//! ruleset in force take the fast path (one rule); after an update, the
//! next packet of every older flow, whichever way it travels, is judged
//! again by the new rules, once (a reply by the `_reply` chains, as its
//! flow). A connection still allowed is re-marked and lives on; one on a
//! port that is now denied is marked DENIED (GEN with the top bit set) and
//! its packets either way are refused from then on, TCP ones with a reset,
//! so both ends of a newly denied connection learn it closed, even when
//! only the server still sends. A rule's counter counts new flows plus,
//! once per update, the flows it re-admits. (Matching conntrack's original
//! tuple instead would need one chain set, but Debian's nft 1.0.6 JSON
//! parser mangles prefixes on `ct original ip saddr`.)
//! An app linked to other apps (see `AppLinkEnd`) also gets, before the
//! isolation jumps, `ip saddr != <app range> jump cross_ingress` and `ip
//! daddr != <app range> jump cross_egress` (and their `_reply` mirrors):
//! chains of its cross-app rules that
//! `accept` (ending the hook) and otherwise drop (`drop:cross-ingress`,
//! `drop:cross-egress`, counted with the direction's drops). Only links
//! bring such packets; the table is what keeps them to the allowed flows.
//! An allowed packet `return`s (not `accept`s), so a flow between two
//! isolated workloads of the same node must pass the egress chain of its
//! source AND the ingress chain of its destination.
//!
//! `nft` is spawned by the calling thread, which the caller has moved into the
//! app netns (a child process inherits its parent thread's netns). The JSON is
//! built with `serde_json`, checked against the `nftables` crate's schema
//! types and fed to `nft -j -f -`; the table is read back with the crate's
//! helper (`nft -j list table ip weft`).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use anyhow::{anyhow, Context, Result};
use ipnet::Ipv4Net;
use serde_json::{json, Value};

use super::nftread::RuleRead;
use crate::core::state::{
    Counter, PolicyCounters, PolicyDirection, PolicyProtocol, PolicyTable, Ruleset, RulesetRule,
};

/// Table name (family `ip`).
pub const TABLE: &str = "weft";
/// Comment prefix of the marker rule.
const MARKER: &str = "weft:";
/// Comment of the rule passing related packets (ICMP errors) of flows
/// admitted under an earlier ruleset.
const STALE_RELATED: &str = "stale:related";
/// Comment of the rules refusing flows marked denied.
const DENIED: &str = "denied";
/// Comment of the rule marking admitted flows.
const ADMIT: &str = "admit";
/// Rule comments are limited to 128 bytes by the kernel.
const MAX_COMMENT: usize = 127;

fn set_of(nets: impl IntoIterator<Item = Ipv4Net>) -> Value {
    let nets: Vec<Ipv4Net> = Ipv4Net::aggregate(&nets.into_iter().collect::<Vec<_>>());
    let items: Vec<Value> = nets
        .iter()
        .map(|n| {
            if n.prefix_len() == 32 {
                json!(n.addr().to_string())
            } else {
                json!({"prefix": {"addr": n.addr().to_string(), "len": n.prefix_len()}})
            }
        })
        .collect();
    json!({"set": items})
}

fn addr_match(field: &str, nets: impl IntoIterator<Item = Ipv4Net>) -> Value {
    json!({"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": field}}, "right": set_of(nets)}})
}

fn host(a: Ipv4Addr) -> Ipv4Net {
    Ipv4Net::new(a, 32).expect("/32 is valid")
}

fn comment(s: &str) -> String {
    let mut end = s.len().min(MAX_COMMENT);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

fn rule(chain: &str, expr: Vec<Value>, comment_text: &str) -> Value {
    json!({"add": {"rule": {
        "family": "ip", "table": TABLE, "chain": chain,
        "expr": expr, "comment": comment(comment_text)
    }}})
}

/// The nft JSON commands that replace the table with `policy` (or just
/// remove it), as one transaction. Pure.
pub fn render(policy: Option<&PolicyTable>) -> Value {
    let table = json!({"table": {"family": "ip", "name": TABLE}});
    // `add` then `delete` works whether or not the table exists.
    let mut cmds = vec![
        json!({"add": table.clone()}),
        json!({"delete": table.clone()}),
    ];
    if let Some(p) = policy {
        cmds.push(json!({"add": table}));
        cmds.extend(render_rules(&p.digest, &p.ruleset));
    }
    json!({"nftables": cmds})
}

fn render_rules(digest: &str, r: &Ruleset) -> Vec<Value> {
    let chain = |name: &str, base: bool| {
        let mut c = json!({"family": "ip", "table": TABLE, "name": name});
        if base {
            c["type"] = json!("filter");
            c["hook"] = json!("forward");
            c["prio"] = json!(0);
            c["policy"] = json!("accept");
        }
        json!({"add": {"chain": c}})
    };
    let mut rules: Vec<(String, Vec<Value>, String)> = Vec::new();
    let counter = || json!({"counter": {"packets": 0, "bytes": 0}});
    let mark = generation_mark(digest);
    let established = || json!({"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}});
    rules.push((
        "forward".into(),
        vec![
            established(),
            json!({"match": {"op": "==", "left": {"ct": {"key": "mark"}}, "right": mark}}),
            counter(),
            json!({"accept": null}),
        ],
        String::new(), // marker comment filled in below
    ));
    // A flow this ruleset refused after admitting it earlier: both ends
    // are shut out (TCP peers get a reset, so neither side hangs on).
    let denied = denied_mark(mark);
    let is_denied =
        || json!({"match": {"op": "==", "left": {"ct": {"key": "mark"}}, "right": denied}});
    rules.push((
        "forward".into(),
        vec![
            is_denied(),
            json!({"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}}),
            counter(),
            json!({"reject": {"type": "tcp reset"}}),
        ],
        DENIED.into(),
    ));
    rules.push((
        "forward".into(),
        vec![is_denied(), counter(), json!({"drop": null})],
        DENIED.into(),
    ));
    // ICMP errors about a flow admitted under an earlier ruleset pass.
    rules.push((
        "forward".into(),
        vec![
            json!({"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["related"]}}),
            counter(),
            json!({"accept": null}),
        ],
        STALE_RELATED.into(),
    ));
    // Flows with linked apps are decided entirely by the cross-app chains
    // (their `accept` ends the hook), before any isolation: a workload open
    // within its app is still closed to other apps unless a rule allows it.
    let cross = !r.linked.is_empty() || !r.cross_app.is_empty();
    // A reply-direction packet here belongs to a flow admitted under an
    // earlier ruleset (new flows start in their original direction): it is
    // judged as its flow, by the same rules with source and destination
    // swapped, so a stream the update denies stops even if only the
    // server still sends.
    for o in [Orientation::Reply, Orientation::Original] {
        let only = |mut expr: Vec<Value>| {
            if o == Orientation::Reply {
                expr.insert(
                    0,
                    json!({"match": {"op": "==", "left": {"ct": {"key": "direction"}}, "right": "reply"}}),
                );
            }
            expr
        };
        if let (true, Some(range)) = (cross, r.app_range) {
            for (field, target) in [("saddr", "cross_ingress"), ("daddr", "cross_egress")] {
                rules.push((
                    "forward".into(),
                    only(vec![
                        json!({"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": o.addr(field)}}, "right": {"prefix": {"addr": range.addr().to_string(), "len": range.prefix_len()}}}}),
                        json!({"jump": {"target": o.chain(target)}}),
                    ]),
                    format!("foreign:{target}"),
                ));
            }
        }
        if !r.ingress_isolated.is_empty() {
            rules.push((
                "forward".into(),
                only(vec![
                    addr_match(
                        o.addr("daddr"),
                        r.ingress_isolated.iter().copied().map(host),
                    ),
                    json!({"jump": {"target": o.chain("ingress")}}),
                ]),
                "isolated:ingress".into(),
            ));
        }
        if !r.egress_isolated.is_empty() {
            rules.push((
                "forward".into(),
                only(vec![
                    addr_match(o.addr("saddr"), r.egress_isolated.iter().copied().map(host)),
                    json!({"jump": {"target": o.chain("egress")}}),
                ]),
                "isolated:egress".into(),
            ));
        }
        // Whatever got here is allowed: remember under which ruleset.
        let mut admit = only(vec![set_mark(mark)]);
        if o == Orientation::Reply {
            admit.push(json!({"accept": null}));
        }
        rules.push(("forward".into(), admit, ADMIT.into()));
    }
    for o in [Orientation::Original, Orientation::Reply] {
        for (dir, chain_name) in [
            (PolicyDirection::Ingress, "ingress"),
            (PolicyDirection::Egress, "egress"),
        ] {
            let (local_field, peer_field) = match dir {
                PolicyDirection::Ingress => ("daddr", "saddr"),
                PolicyDirection::Egress => ("saddr", "daddr"),
            };
            for x in r.rules.iter().filter(|x| x.direction == dir) {
                if let Some(mut expr) = rule_match(x, o, local_field, peer_field, r.app_range) {
                    expr.push(counter());
                    expr.push(json!({"return": null}));
                    rules.push((o.chain(chain_name), expr, x.id.clone()));
                }
            }
            rules.extend(drop_rules(
                &o.chain(chain_name),
                &format!("drop:{chain_name}"),
                denied,
            ));
            if cross {
                // Cross-app rules never have empty peers (the planner lists
                // the other app's addresses), so no range stands in for them.
                let cross_chain = o.chain(&format!("cross_{chain_name}"));
                for x in r.cross_app.iter().filter(|x| x.direction == dir) {
                    if x.peers.is_empty() {
                        continue;
                    }
                    if let Some(mut expr) = rule_match(x, o, local_field, peer_field, None) {
                        expr.push(counter());
                        expr.push(set_mark(mark));
                        expr.push(json!({"accept": null}));
                        rules.push((cross_chain.clone(), expr, x.id.clone()));
                    }
                }
                rules.extend(drop_rules(
                    &cross_chain,
                    &format!("drop:cross-{chain_name}"),
                    denied,
                ));
            }
        }
    }
    let n = rules.len();
    rules[0].2 = format!("{MARKER}{digest}:{n}");
    let mut out = vec![chain("forward", true)];
    for o in [Orientation::Original, Orientation::Reply] {
        out.push(chain(&o.chain("ingress"), false));
        out.push(chain(&o.chain("egress"), false));
        if cross {
            out.push(chain(&o.chain("cross_ingress"), false));
            out.push(chain(&o.chain("cross_egress"), false));
        }
    }
    out.extend(rules.into_iter().map(|(c, e, m)| rule(&c, e, &m)));
    out
}

/// Which way a packet travels relative to its flow's first packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Orientation {
    /// As the flow started: rules match the packet's fields as they are.
    Original,
    /// A reply: the flow's source is the packet's destination (and its
    /// destination port the packet's source port).
    Reply,
}

impl Orientation {
    /// The packet field that holds the flow's `field`.
    fn addr(self, field: &'static str) -> &'static str {
        match (self, field) {
            (Orientation::Reply, "saddr") => "daddr",
            (Orientation::Reply, "daddr") => "saddr",
            (_, f) => f,
        }
    }

    /// The packet field that holds the flow's destination port.
    fn dport(self) -> &'static str {
        match self {
            Orientation::Original => "dport",
            Orientation::Reply => "sport",
        }
    }

    /// The chain judging this orientation.
    fn chain(self, base: &str) -> String {
        match self {
            Orientation::Original => base.to_string(),
            Orientation::Reply => format!("{base}_reply"),
        }
    }
}

/// The conntrack mark of flows admitted under the ruleset with `digest`
/// (never 0, the mark of flows no ruleset admitted yet; the top bit is
/// [`denied_mark`]'s).
pub fn generation_mark(digest: &str) -> u32 {
    let hex: String = digest.chars().take(8).collect();
    (u32::from_str_radix(&hex, 16).unwrap_or(0) & !DENIED_BIT).max(1)
}

/// The mark of flows the ruleset with generation mark `mark` refused after
/// an earlier one admitted them. A later ruleset judges them afresh.
pub fn denied_mark(mark: u32) -> u32 {
    mark | DENIED_BIT
}

const DENIED_BIT: u32 = 1 << 31;

fn set_mark(mark: u32) -> Value {
    json!({"mangle": {"key": {"ct": {"key": "mark"}}, "value": mark}})
}

/// The end of a chain. An established flow judged again after an update
/// and now refused is marked `denied` (so its packets either way are
/// refused from now on) and, if TCP, reset; a new flow is dropped
/// silently. All count as drops.
fn drop_rules(chain: &str, comment: &str, denied: u32) -> Vec<(String, Vec<Value>, String)> {
    let established = || json!({"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established"]}});
    let counter = || json!({"counter": {"packets": 0, "bytes": 0}});
    vec![
        (
            chain.to_string(),
            vec![
                established(),
                json!({"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}}),
                set_mark(denied),
                counter(),
                json!({"reject": {"type": "tcp reset"}}),
            ],
            comment.to_string(),
        ),
        (
            chain.to_string(),
            vec![
                established(),
                set_mark(denied),
                counter(),
                json!({"drop": null}),
            ],
            comment.to_string(),
        ),
        (
            chain.to_string(),
            vec![counter(), json!({"drop": null})],
            comment.to_string(),
        ),
    ]
}

/// The match expressions of one allow rule (`None`: it has no local
/// address, so it can never match).
fn rule_match(
    x: &RulesetRule,
    o: Orientation,
    local_field: &'static str,
    peer_field: &'static str,
    app_range: Option<Ipv4Net>,
) -> Option<Vec<Value>> {
    if x.local.is_empty() {
        return None;
    }
    let (local_field, peer_field) = (o.addr(local_field), o.addr(peer_field));
    let mut expr = vec![addr_match(local_field, x.local.iter().copied().map(host))];
    if x.peers.is_empty() {
        if let Some(range) = app_range {
            expr.push(addr_match(peer_field, [range]));
        }
    } else {
        expr.push(addr_match(peer_field, x.peers.iter().copied()));
    }
    if let Some(proto) = x.protocol {
        let name = match proto {
            PolicyProtocol::Tcp => "tcp",
            PolicyProtocol::Udp => "udp",
            PolicyProtocol::Icmp => "icmp",
        };
        expr.push(
            json!({"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": name}}),
        );
        if let (Some((lo, hi)), PolicyProtocol::Tcp | PolicyProtocol::Udp) = (x.ports, proto) {
            let right = if lo == hi {
                json!(lo)
            } else {
                json!({"range": [lo, hi]})
            };
            expr.push(json!({"match": {"op": "==", "left": {"payload": {"protocol": name, "field": o.dport()}}, "right": right}}));
        }
    }
    Some(expr)
}

/// Replaces (or removes) the table in the calling thread's netns, atomically.
pub fn apply(policy: Option<&PolicyTable>) -> Result<()> {
    match run_batch(render(policy), "the ruleset") {
        // Nothing to remove where nftables is not installed.
        Err(e) if policy.is_none() && is_not_found(&e) => Ok(()),
        r => r,
    }
}

/// Applies one JSON batch in the calling thread's netns (one kernel
/// transaction: all of it or nothing), checked against the `nftables`
/// crate's schema first: through libnftables in process where it is
/// installed ([`super::libnft`]), else fed to `nft -j -f -` with stderr
/// captured, so a refusal reaches status in nft's own words either way.
pub(super) fn run_batch(doc: Value, what: &str) -> Result<()> {
    let nft: nftables::schema::Nftables<'_> = serde_json::from_value(doc)
        .with_context(|| format!("{what} does not fit the nftables schema"))?;
    let payload = serde_json::to_vec(&nft).with_context(|| format!("serialise {what}"))?;
    if let Some(done) = super::libnft::run_json(&payload) {
        return done.map_err(|e| anyhow!("nft refused {what} (nothing of it applied): {e:#}"));
    }
    let mut child = Command::new("nft")
        .args(["-j", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("run nft")?;
    child
        .stdin
        .take()
        .context("nft stdin")?
        .write_all(&payload)
        .context("write to nft")?;
    let out = child.wait_with_output().context("wait for nft")?;
    if out.status.success() {
        Ok(())
    } else {
        Err(anyhow!(
            "nft refused {what} (nothing of it applied): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn is_not_found(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
}

/// Reads the table back: its digest (from the marker rule, or "drift" when
/// rules were added or removed by hand) and every counter.
pub fn observe(rt: &tokio::runtime::Runtime) -> Result<Option<(PolicyTable, PolicyCounters)>> {
    Ok(super::nftread::rules(rt, TABLE, None)?.map(|r| parse_listing(&r)))
}

/// Only the digest in the marker rule of the `forward` chain (`None` when
/// there is no table): a cheap check that the table is still the one last
/// read in full. Rule-level drift inside the table waits for the next full read.
pub fn observe_marker(rt: &tokio::runtime::Runtime) -> Result<Option<String>> {
    Ok(super::nftread::rules(rt, TABLE, Some("forward"))?
        .map(|r| marker_digest(&r).unwrap_or_else(|| "drift".to_string())))
}

/// The digest of the marker rule in a listing, if present.
fn marker_digest(rules: &[RuleRead]) -> Option<String> {
    rules.iter().find_map(|r| {
        let rest = r.comment.strip_prefix(MARKER)?;
        rest.rsplit_once(':').map(|(d, _)| d.to_string())
    })
}

/// Digest and counters from the rules of table `ip weft`. Pure.
pub fn parse_listing(rules: &[RuleRead]) -> (PolicyTable, PolicyCounters) {
    let mut counters = PolicyCounters::default();
    let mut marker: Option<(String, usize)> = None;
    let n = rules.len();
    let mut seen: BTreeMap<String, Counter> = BTreeMap::new();
    for r in rules {
        let c = Counter {
            packets: r.packets,
            bytes: r.bytes,
        };
        let comment = r.comment.as_str();
        if let Some(rest) = comment.strip_prefix(MARKER) {
            if let Some((d, k)) = rest.rsplit_once(':') {
                marker = k.parse().ok().map(|k| (d.to_string(), k));
            }
            counters.established.packets += c.packets;
            counters.established.bytes += c.bytes;
        } else if comment == "drop:ingress" || comment == "drop:cross-ingress" {
            counters.dropped_ingress.packets += c.packets;
            counters.dropped_ingress.bytes += c.bytes;
        } else if comment == "drop:egress" || comment == "drop:cross-egress" {
            counters.dropped_egress.packets += c.packets;
            counters.dropped_egress.bytes += c.bytes;
        } else if comment == STALE_RELATED {
            counters.established.packets += c.packets;
            counters.established.bytes += c.bytes;
        } else if !comment.is_empty()
            && !comment.starts_with("isolated:")
            && !comment.starts_with("foreign:")
            && comment != DENIED
            && comment != ADMIT
        {
            let e = seen.entry(comment.to_string()).or_default();
            e.packets += c.packets;
            e.bytes += c.bytes;
        }
    }
    counters.rules = seen;
    let digest = match marker {
        Some((d, k)) if k == n => d,
        _ => "drift".to_string(),
    };
    (
        PolicyTable {
            digest,
            ruleset: Ruleset::default(),
        },
        counters,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::linux::nftread::from_json;

    fn sample() -> PolicyTable {
        Ruleset {
            app_range: Some("10.1.0.0/16".parse().unwrap()),
            ingress_isolated: vec!["10.1.1.2".parse().unwrap()],
            egress_isolated: vec![],
            rules: vec![RulesetRule {
                id: "demo/p:ingress[0].ports[0]".into(),
                direction: PolicyDirection::Ingress,
                local: vec!["10.1.1.2".parse().unwrap()],
                peers: vec![
                    "10.1.2.0/24".parse().unwrap(),
                    "10.1.2.3/32".parse().unwrap(),
                ],
                protocol: Some(PolicyProtocol::Tcp),
                ports: Some((80, 90)),
            }],
            ..Default::default()
        }
        .into_table()
    }

    #[test]
    fn render_fits_the_crate_schema_and_is_one_transaction() {
        let doc = render(Some(&sample()));
        let nft: nftables::schema::Nftables<'_> = serde_json::from_value(doc.clone()).unwrap();
        let cmds = doc["nftables"].as_array().unwrap();
        // add+delete+add table, 5 chains (forward, ingress, egress and
        // their _reply mirrors); forward: marker, 2 denied, related, reply
        // jump, reply admit, jump, admit; ingress and ingress_reply: 1 rule,
        // reset, denied drop, drop; egress and egress_reply: 3 drops.
        assert_eq!(cmds.len(), 3 + 5 + 22);
        assert_eq!(nft.objects.len(), cmds.len());
        let marker = cmds[8]["add"]["rule"]["comment"].as_str().unwrap();
        assert_eq!(marker, format!("weft:{}:22", sample().digest));
        // The fast path only for flows admitted under this very ruleset.
        let mark = generation_mark(&sample().digest);
        assert_ne!(mark, 0);
        assert_eq!(
            cmds[8]["add"]["rule"]["expr"][1]["match"]["right"],
            json!(mark)
        );
        assert_eq!(cmds[15]["add"]["rule"]["comment"], "admit");
        // A reply is judged as its flow: the rule with source and
        // destination swapped, its port on the source side.
        let reply_rule = cmds
            .iter()
            .map(|c| &c["add"]["rule"])
            .find(|r| r["chain"] == "ingress_reply" && r["comment"] == "demo/p:ingress[0].ports[0]")
            .expect("the rule mirrored for replies");
        let e = &reply_rule["expr"];
        assert_eq!(
            e[0]["match"]["left"]["payload"]["field"], "saddr",
            "{reply_rule}"
        );
        assert_eq!(e[0]["match"]["right"], json!({"set": ["10.1.1.2"]}));
        assert_eq!(e[1]["match"]["left"]["payload"]["field"], "daddr");
        assert_eq!(e[3]["match"]["left"]["payload"]["field"], "sport");
        // A refused flow's mark differs from the admitted one's, and a
        // later ruleset's admitted mark never equals it.
        assert_eq!(denied_mark(mark), mark | (1 << 31));
        assert_eq!(generation_mark("ffffffff") & (1 << 31), 0);
        // Overlapping peers are merged (nft refuses overlapping intervals).
        let text = doc.to_string();
        assert!(
            text.contains(r#"{"prefix":{"addr":"10.1.2.0","len":24}}"#),
            "{text}"
        );
        assert!(!text.contains("10.1.2.3"));
    }

    #[test]
    fn removal_is_add_then_delete() {
        let doc = render(None);
        assert_eq!(doc["nftables"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn marker_digest_is_read_from_a_chain_listing() {
        let v = json!({"nftables": [
            {"metainfo": {"json_schema_version": 1}},
            {"rule": {"family": "ip", "table": "weft", "chain": "forward", "comment": "weft:abc123:7", "expr": []}},
            {"rule": {"family": "ip", "table": "weft", "chain": "forward", "expr": []}}
        ]});
        assert_eq!(marker_digest(&from_json(&v)).as_deref(), Some("abc123"));
        assert_eq!(marker_digest(&[]), None);
    }

    #[test]
    fn listing_round_trip_gives_digest_and_counters() {
        let doc = render(Some(&sample()));
        // Shape the rendered rules like a listing: `{"rule": {...}}` objects.
        let listing: Vec<Value> = doc["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["add"].get("rule").map(|r| json!({ "rule": r })))
            .collect();
        let (t, c) = parse_listing(&from_json(&json!({ "nftables": listing })));
        assert_eq!(t.digest, sample().digest);
        assert!(c.rules.contains_key("demo/p:ingress[0].ports[0]"));
        let mut fewer = listing.clone();
        fewer.pop();
        let (t, _) = parse_listing(&from_json(&json!({ "nftables": fewer })));
        assert_eq!(t.digest, "drift");
    }
}
