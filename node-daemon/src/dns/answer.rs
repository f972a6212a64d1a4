//! What the resolver says to one query: pure, so every rule is unit-tested
//! without sockets.
//!
//! One app's zone is `<app-name>.<app-namespace>.weft.`; its names are the
//! app's workloads (`AppAttachment::names`). Inside `.weft` only that zone
//! exists for the asking app: every other `.weft` name is NXDOMAIN, so an app
//! learns nothing about other apps' workloads. Names outside `.weft` are not
//! ours to answer: the caller forwards them (see [`super::upstream`]).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use weft_api::meshnode::WorkloadName;

/// TTL of answers: short, because a moved or restarted workload gets a new
/// address and the names follow the MeshNode within a pass or two.
pub const TTL: u32 = 5;
/// The top-level domain Weft answers for.
pub const TLD: &str = "weft";
/// UDP payload we advertise over EDNS (the DNS-flag-day value that avoids
/// IP fragmentation).
pub const EDNS_PAYLOAD: u16 = 1232;

/// One app's names, ready to answer from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Zone {
    /// `<app-name>.<app-namespace>.weft.`, lowercase.
    origin: Name,
    /// Lowercase first label -> addresses (sorted, deduplicated).
    records: BTreeMap<String, Vec<Ipv4Addr>>,
}

/// The zone name of app `namespace/name`: `name.namespace.weft` (no trailing
/// dot), or `None` when `app` is not `namespace/name`.
pub fn zone_name(app: &str) -> Option<String> {
    let (ns, name) = app.split_once('/')?;
    (!ns.is_empty() && !name.is_empty()).then(|| format!("{name}.{ns}.{TLD}").to_lowercase())
}

impl Zone {
    /// The zone of app `namespace/name` holding `names`. Entries whose name is
    /// not a single DNS label or whose address is not IPv4 are skipped (the
    /// operator validates both; a bad one must not take the others down).
    pub fn new(app: &str, names: &[WorkloadName]) -> Option<Zone> {
        let origin = Name::from_ascii(format!("{}.", zone_name(app)?)).ok()?;
        let mut records: BTreeMap<String, Vec<Ipv4Addr>> = BTreeMap::new();
        for n in names {
            let label = n.name.to_ascii_lowercase();
            let valid = !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            let Ok(addr) = n.address.parse::<Ipv4Addr>() else {
                continue;
            };
            if valid {
                records.entry(label).or_default().push(addr);
            }
        }
        for v in records.values_mut() {
            v.sort();
            v.dedup();
        }
        Some(Zone { origin, records })
    }

    /// The zone's name (lowercase, fully qualified).
    pub fn origin(&self) -> &Name {
        &self.origin
    }

    /// Addresses of workload `label` (any case).
    pub fn lookup(&self, label: &str) -> &[Ipv4Addr] {
        self.records
            .get(&label.to_ascii_lowercase())
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// The zone's SOA record (negative answers carry it, so clients cache a
    /// miss for [`TTL`] seconds only).
    fn soa(&self) -> Record {
        let ns = self
            .origin
            .prepend_label("ns")
            .unwrap_or_else(|_| self.origin.clone());
        let mbox = self
            .origin
            .prepend_label("hostmaster")
            .unwrap_or_else(|_| self.origin.clone());
        let soa = SOA::new(ns, mbox, 1, 60, 60, 3600, TTL);
        Record::from_rdata(self.origin.clone(), TTL, RData::SOA(soa))
    }
}

/// What to do with a query.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Send this reply.
    Reply(Box<Message>),
    /// Not a `.weft` name: pass the query on to the node's resolvers.
    Forward,
    /// Not a query at all (a response, say): say nothing, so two resolvers
    /// can never bounce messages between each other.
    Ignore,
}

/// The reply header for `req`: id, opcode, RD and CD copied (RFC 6895 2).
fn reply_to(req: &Message, code: ResponseCode) -> Message {
    let mut m = Message::response(req.metadata.id, req.metadata.op_code);
    m.metadata = Metadata::response_from_request(&req.metadata);
    m.metadata.response_code = code;
    // We recurse for names outside `.weft` (by forwarding).
    m.metadata.recursion_available = true;
    m.add_queries(req.queries.iter().cloned());
    if req.edns.is_some() {
        let mut e = Edns::new();
        e.set_max_payload(EDNS_PAYLOAD);
        m.set_edns(e);
    }
    m
}

/// Decides the answer to `req` from `zone`.
pub fn answer(zone: &Zone, req: &Message) -> Outcome {
    if req.metadata.message_type != MessageType::Query {
        return Outcome::Ignore;
    }
    if req.metadata.op_code != OpCode::Query {
        return Outcome::Reply(Box::new(reply_to(req, ResponseCode::NotImp)));
    }
    let [q] = req.queries.as_slice() else {
        return Outcome::Reply(Box::new(reply_to(req, ResponseCode::FormErr)));
    };
    let name = q.name().to_lowercase();
    let tld = Name::from_ascii(format!("{TLD}.")).expect("static name");
    if !tld.zone_of(&name) {
        return Outcome::Forward;
    }
    if q.query_class() != DNSClass::IN {
        return Outcome::Reply(Box::new(reply_to(req, ResponseCode::Refused)));
    }
    if !zone.origin.zone_of(&name) {
        // Another app's zone, or a `.weft` name that does not exist: the same
        // answer for both, so nothing leaks across apps.
        return Outcome::Reply(Box::new(reply_to(req, ResponseCode::NXDomain)));
    }
    let mut m = reply_to(req, ResponseCode::NoError);
    m.metadata.authoritative = true;
    let depth = name.num_labels() - zone.origin.num_labels();
    let wants_a = matches!(q.query_type(), RecordType::A | RecordType::ANY);
    match depth {
        0 if q.query_type() == RecordType::SOA => {
            m.add_answer(zone.soa());
        }
        0 => {
            m.add_authority(zone.soa());
        }
        1 => {
            let label =
                String::from_utf8_lossy(name.iter().next().unwrap_or_default()).into_owned();
            let addrs = zone.lookup(&label);
            if addrs.is_empty() {
                m.metadata.response_code = ResponseCode::NXDomain;
                m.add_authority(zone.soa());
            } else if wants_a {
                // The owner name as asked (its case too: 0x20 randomisation).
                for a in addrs {
                    m.add_answer(Record::from_rdata(q.name().clone(), TTL, RData::A(A(*a))));
                }
            } else {
                // The name exists but has no record of that type (AAAA...).
                m.add_authority(zone.soa());
            }
        }
        _ => {
            m.metadata.response_code = ResponseCode::NXDomain;
            m.add_authority(zone.soa());
        }
    }
    Outcome::Reply(Box::new(m))
}

/// The reply `req` gets when no upstream answered a forwarded query.
pub fn server_failure(req: &Message) -> Message {
    reply_to(req, ResponseCode::ServFail)
}

/// Encodes `reply` for a transport that carries at most `max` bytes: an
/// answer that does not fit goes out truncated (TC set, question only), so
/// the client retries over TCP.
pub fn encode(reply: &Message, max: usize) -> Option<Vec<u8>> {
    let bytes = reply.to_vec().ok()?;
    if bytes.len() <= max {
        return Some(bytes);
    }
    reply.truncate().to_vec().ok()
}

/// The largest UDP reply `req` accepts (512 without EDNS, RFC 6891 6.2.5).
pub fn udp_limit(req: &Message) -> usize {
    match &req.edns {
        Some(e) => usize::from(e.max_payload().clamp(512, EDNS_PAYLOAD)),
        None => 512,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;

    fn names(pairs: &[(&str, &str)]) -> Vec<WorkloadName> {
        pairs
            .iter()
            .map(|(n, a)| WorkloadName {
                name: n.to_string(),
                address: a.to_string(),
            })
            .collect()
    }

    fn zone() -> Zone {
        Zone::new(
            "demo/web",
            &names(&[
                ("web-1", "10.120.0.2"),
                ("web-2", "10.120.1.2"),
                // The same workload name in two federated clusters.
                ("api", "10.120.0.3"),
                ("api", "10.120.64.3"),
                ("api", "10.120.0.3"),
                ("bad name", "10.120.0.9"),
                ("v6", "fd00::1"),
            ]),
        )
        .unwrap()
    }

    fn query(name: &str, t: RecordType) -> Message {
        let mut m = Message::query();
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        m
    }

    fn reply(o: Outcome) -> Message {
        match o {
            Outcome::Reply(m) => *m,
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn addrs(m: &Message) -> Vec<Ipv4Addr> {
        m.answers
            .iter()
            .filter_map(|r| match r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn zone_name_is_name_then_namespace() {
        assert_eq!(zone_name("demo/web").as_deref(), Some("web.demo.weft"));
        assert_eq!(zone_name("Demo/Web").as_deref(), Some("web.demo.weft"));
        assert_eq!(zone_name("web"), None);
        assert_eq!(zone_name("/web"), None);
    }

    #[test]
    fn a_workload_name_answers_its_address() {
        let q = query("web-2.web.demo.weft.", RecordType::A);
        let m = reply(answer(&zone(), &q));
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative);
        assert_eq!(m.metadata.id, q.metadata.id);
        assert!(m.metadata.recursion_desired);
        assert_eq!(m.metadata.message_type, MessageType::Response);
        assert_eq!(addrs(&m), vec!["10.120.1.2".parse::<Ipv4Addr>().unwrap()]);
        assert!(m.answers.iter().all(|r| r.ttl == TTL));
        assert_eq!(m.queries, q.queries);
    }

    #[test]
    fn a_name_in_two_places_answers_every_address_once() {
        let m = reply(answer(&zone(), &query("api.web.demo.weft.", RecordType::A)));
        assert_eq!(
            addrs(&m),
            vec![
                "10.120.0.3".parse::<Ipv4Addr>().unwrap(),
                "10.120.64.3".parse().unwrap()
            ]
        );
    }

    #[test]
    fn names_match_in_any_case_and_keep_the_asked_case() {
        let m = reply(answer(
            &zone(),
            &query("WeB-1.wEb.DEMO.Weft.", RecordType::A),
        ));
        assert_eq!(addrs(&m), vec!["10.120.0.2".parse::<Ipv4Addr>().unwrap()]);
        assert_eq!(m.answers[0].name.to_ascii(), "WeB-1.wEb.DEMO.Weft.");
        // Upper case in the names list too.
        let z = Zone::new("demo/web", &names(&[("Web-3", "10.120.0.4")])).unwrap();
        let m = reply(answer(&z, &query("web-3.web.demo.weft.", RecordType::A)));
        assert_eq!(addrs(&m), vec!["10.120.0.4".parse::<Ipv4Addr>().unwrap()]);
    }

    #[test]
    fn unknown_names_under_weft_are_nxdomain() {
        for n in [
            "web-9.web.demo.weft.",
            "a.web-1.web.demo.weft.",
            // Another app's zone: no answer about it, whatever it holds.
            "db-1.db.demo.weft.",
            "demo.weft.",
            "weft.",
            "bad name.web.demo.weft.",
            "v6.web.demo.weft.",
        ] {
            let Ok(name) = Name::from_ascii(n) else {
                continue;
            };
            let mut q = Message::query();
            q.add_query(Query::query(name, RecordType::A));
            let m = reply(answer(&zone(), &q));
            assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{n}");
            assert!(m.answers.is_empty(), "{n}");
        }
        // Inside the zone the miss carries the zone's SOA (negative caching).
        let m = reply(answer(
            &zone(),
            &query("web-9.web.demo.weft.", RecordType::A),
        ));
        assert_eq!(m.authorities.len(), 1);
        assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
    }

    #[test]
    fn other_types_of_a_known_name_are_empty_not_missing() {
        let m = reply(answer(
            &zone(),
            &query("web-1.web.demo.weft.", RecordType::AAAA),
        ));
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
        assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
        // The apex exists.
        let m = reply(answer(&zone(), &query("web.demo.weft.", RecordType::A)));
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        let m = reply(answer(&zone(), &query("web.demo.weft.", RecordType::SOA)));
        assert_eq!(m.answers[0].record_type(), RecordType::SOA);
    }

    #[test]
    fn names_outside_weft_are_forwarded() {
        for n in [
            "example.com.",
            "weft.example.com.",
            "web-1.web.demo.weft.example.",
            ".",
        ] {
            assert_eq!(
                answer(&zone(), &query(n, RecordType::A)),
                Outcome::Forward,
                "{n}"
            );
        }
        // A suffix that only looks like the TLD.
        assert_eq!(
            answer(&zone(), &query("xweft.", RecordType::A)),
            Outcome::Forward
        );
    }

    #[test]
    fn responses_are_ignored_and_odd_queries_refused() {
        let mut r = query("web-1.web.demo.weft.", RecordType::A);
        r.metadata.message_type = MessageType::Response;
        assert_eq!(answer(&zone(), &r), Outcome::Ignore);
        let mut u = query("web-1.web.demo.weft.", RecordType::A);
        u.metadata.op_code = OpCode::Update;
        assert_eq!(
            reply(answer(&zone(), &u)).metadata.response_code,
            ResponseCode::NotImp
        );
        let mut two = query("web-1.web.demo.weft.", RecordType::A);
        two.add_query(Query::query(
            Name::from_ascii("web-2.web.demo.weft.").unwrap(),
            RecordType::A,
        ));
        assert_eq!(
            reply(answer(&zone(), &two)).metadata.response_code,
            ResponseCode::FormErr
        );
        let mut none = Message::query();
        none.metadata.recursion_desired = true;
        assert_eq!(
            reply(answer(&zone(), &none)).metadata.response_code,
            ResponseCode::FormErr
        );
    }

    #[test]
    fn replies_survive_the_wire_and_big_ones_are_truncated() {
        let many: Vec<WorkloadName> = (0..200)
            .map(|i| WorkloadName {
                name: "big".into(),
                address: format!("10.120.{}.{}", i / 250, i % 250 + 2),
            })
            .collect();
        let z = Zone::new("demo/web", &many).unwrap();
        let q = query("big.web.demo.weft.", RecordType::A);
        let m = reply(answer(&z, &q));
        assert_eq!(m.answers.len(), 200);
        let udp = encode(&m, udp_limit(&q)).unwrap();
        assert!(udp.len() <= 512);
        let back = Message::from_vec(&udp).unwrap();
        assert!(back.metadata.truncation);
        assert_eq!(back.metadata.id, q.metadata.id);
        let tcp = encode(&m, usize::from(u16::MAX)).unwrap();
        let back = Message::from_vec(&tcp).unwrap();
        assert!(!back.metadata.truncation);
        assert_eq!(back.answers.len(), 200);
    }

    #[test]
    fn edns_queries_get_edns_replies() {
        let mut q = query("web-1.web.demo.weft.", RecordType::A);
        let mut e = Edns::new();
        e.set_max_payload(4096);
        q.set_edns(e);
        assert_eq!(udp_limit(&q), usize::from(EDNS_PAYLOAD));
        let m = reply(answer(&zone(), &q));
        assert_eq!(m.edns.as_ref().map(Edns::max_payload), Some(EDNS_PAYLOAD));
        let plain = reply(answer(
            &zone(),
            &query("web-1.web.demo.weft.", RecordType::A),
        ));
        assert!(plain.edns.is_none());
    }
}
