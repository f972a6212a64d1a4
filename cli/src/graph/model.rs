//! The mesh as a graph, built from MeshNode objects (spec and status): the
//! sites, their nodes, the apps placed on each node, the peer links of every
//! app with their handshake age, cross-app links and transit placements.
//! Pure: the renderers draw exactly this.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::jiff::Timestamp;
use weft_api::meshnode::HANDSHAKE_FRESH_SECONDS;
use weft_api::MeshNode;
use weft_operator::standalone::LOST_AFTER_SECONDS;

/// How recent a peer link's last handshake is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Handshake {
    /// Younger than [`HANDSHAKE_FRESH_SECONDS`] (the link counts as up).
    Fresh,
    /// Older: the link is down or idle beyond WireGuard's session lifetime.
    Stale,
    /// No handshake reported by either end.
    Never,
}

impl Handshake {
    /// The class of a handshake `age` in seconds.
    pub fn of(age: Option<u64>) -> Handshake {
        match age {
            Some(s) if s < HANDSHAKE_FRESH_SECONDS => Handshake::Fresh,
            Some(_) => Handshake::Stale,
            None => Handshake::Never,
        }
    }
    /// CSS class / DOT class name.
    pub fn class(self) -> &'static str {
        match self {
            Handshake::Fresh => "fresh",
            Handshake::Stale => "stale",
            Handshake::Never => "never",
        }
    }
    /// Colour: green, amber, red.
    pub fn colour(self) -> &'static str {
        match self {
            Handshake::Fresh => "#2e7d32",
            Handshake::Stale => "#f9a825",
            Handshake::Never => "#c62828",
        }
    }
}

/// One app on one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The app, `namespace/name`.
    pub app: String,
    /// Placed without workloads of its own, to carry cross-app flows.
    pub transit: bool,
    /// Other apps it has an app link (veth pair) with on this node.
    pub links: Vec<String>,
}

/// A node of the mesh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// The MeshNode's name.
    pub name: String,
    /// Its site.
    pub site: String,
    /// No heartbeat for longer than the operator's lost-node limit (or none
    /// at all); a node only known as some other node's peer is never lost.
    pub lost: bool,
    /// Known only as a peer of the nodes listed (e.g. at another site).
    pub external: bool,
    /// Apps placed on the node, sorted.
    pub apps: Vec<Placement>,
}

/// A WireGuard peer link of one app between two nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// The app.
    pub app: String,
    /// One end (sorts before `b`).
    pub a: String,
    /// The other end.
    pub b: String,
    /// The youngest handshake either end reports, in seconds.
    pub age: Option<u64>,
    /// Its class.
    pub handshake: Handshake,
}

/// A site and its nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    /// The site's name.
    pub name: String,
    /// Its nodes, sorted.
    pub nodes: Vec<String>,
}

/// The whole picture.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Graph {
    /// Sites, sorted by name.
    pub sites: Vec<Site>,
    /// Nodes, sorted by site then name.
    pub nodes: Vec<Node>,
    /// Peer links, sorted by (a, b, app).
    pub links: Vec<Link>,
    /// The apps drawn, sorted.
    pub apps: Vec<String>,
}

impl Graph {
    /// The node named `name`.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

/// Whether app `app` (`namespace/name`) is the one `filter` names: either
/// `namespace/name` or just `name`.
pub fn app_matches(app: &str, filter: &str) -> bool {
    app == filter || (!filter.contains('/') && app.rsplit_once('/').map(|(_, n)| n) == Some(filter))
}

fn lost(node: &MeshNode, now: Timestamp) -> bool {
    let hb = node
        .status
        .as_ref()
        .and_then(|s| s.heartbeat.as_deref())
        .and_then(|h| h.parse::<Timestamp>().ok());
    match hb {
        Some(hb) => now.duration_since(hb).as_secs() > LOST_AFTER_SECONDS,
        None => true,
    }
}

/// Builds the graph of `nodes`, only app `app` when given.
pub fn build(nodes: &[MeshNode], app: Option<&str>, now: Timestamp) -> Graph {
    let keep = |a: &str| app.is_none_or(|f| app_matches(a, f));
    let mut out_nodes: BTreeMap<String, Node> = BTreeMap::new();
    // (a, b, app) -> youngest handshake.
    let mut links: BTreeMap<(String, String, String), Option<u64>> = BTreeMap::new();
    let mut pair = |x: &str, y: &str, app: &str, age: Option<u64>| {
        let (a, b) = if x <= y { (x, y) } else { (y, x) };
        let e = links
            .entry((a.to_string(), b.to_string(), app.to_string()))
            .or_insert(None);
        *e = match (*e, age) {
            (Some(p), Some(q)) => Some(p.min(q)),
            (p, q) => p.or(q),
        };
    };
    for mn in nodes {
        let name = mn.metadata.name.clone().unwrap_or_default();
        let mut apps: Vec<Placement> = Vec::new();
        for att in mn.spec.apps.iter().filter(|a| keep(&a.app)) {
            apps.push(Placement {
                app: att.app.clone(),
                transit: att.workloads.is_empty()
                    && (!att.app_links.is_empty() || !att.remote_apps.is_empty()),
                links: att.app_links.iter().map(|l| l.app.clone()).collect(),
            });
            for p in &att.peers {
                pair(&name, &p.node, &att.app, None);
            }
        }
        if let Some(st) = &mn.status {
            for s in st.apps.iter().filter(|a| keep(&a.app)) {
                if !apps.iter().any(|p| p.app == s.app) {
                    apps.push(Placement {
                        app: s.app.clone(),
                        transit: false,
                        links: vec![],
                    });
                }
                for p in &s.peers {
                    pair(&name, &p.node, &s.app, p.last_handshake_seconds);
                }
            }
        }
        apps.sort_by(|a, b| a.app.cmp(&b.app));
        if app.is_some() && apps.is_empty() {
            continue;
        }
        out_nodes.insert(
            name.clone(),
            Node {
                name,
                site: mn.spec.site.clone(),
                lost: lost(mn, now),
                external: false,
                apps,
            },
        );
    }
    // Peers that are no MeshNode here (another site's nodes).
    for (a, b, app) in links.keys() {
        for n in [a, b] {
            let node = out_nodes.entry(n.clone()).or_insert_with(|| Node {
                name: n.clone(),
                site: "remote".into(),
                lost: false,
                external: true,
                apps: vec![],
            });
            if node.external && !node.apps.iter().any(|p| &p.app == app) {
                node.apps.push(Placement {
                    app: app.clone(),
                    transit: false,
                    links: vec![],
                });
                node.apps.sort_by(|x, y| x.app.cmp(&y.app));
            }
        }
    }
    let mut nodes: Vec<Node> = out_nodes.into_values().collect();
    nodes.sort_by(|x, y| (&x.site, &x.name).cmp(&(&y.site, &y.name)));
    let mut sites: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for n in &nodes {
        sites
            .entry(n.site.clone())
            .or_default()
            .push(n.name.clone());
    }
    let apps: BTreeSet<String> = nodes
        .iter()
        .flat_map(|n| n.apps.iter().map(|p| p.app.clone()))
        .collect();
    Graph {
        sites: sites
            .into_iter()
            .map(|(name, nodes)| Site { name, nodes })
            .collect(),
        nodes,
        links: links
            .into_iter()
            .map(|((a, b, app), age)| Link {
                app,
                a,
                b,
                age,
                handshake: Handshake::of(age),
            })
            .collect(),
        apps: apps.into_iter().collect(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Arc;
    use weft_api::{
        AppAttachment, AppLink, AppStatus, MeshNodeSpec, MeshNodeStatus, PeerSpec, PeerStatus,
    };

    pub(crate) fn now() -> Timestamp {
        "2025-01-01T01:00:00Z".parse().unwrap()
    }

    fn att(app: &str, workloads: &[&str], peers: &[&str], links: &[&str]) -> AppAttachment {
        AppAttachment {
            app: app.into(),
            workloads: workloads.iter().map(|s| s.to_string()).collect(),
            peers: peers
                .iter()
                .map(|p| {
                    Arc::new(PeerSpec {
                        node: p.to_string(),
                        ..Default::default()
                    })
                })
                .collect(),
            app_links: links
                .iter()
                .map(|l| AppLink {
                    app: l.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn status(app: &str, peers: &[(&str, Option<u64>)]) -> AppStatus {
        AppStatus {
            app: app.into(),
            peers: peers
                .iter()
                .map(|(n, age)| PeerStatus {
                    node: n.to_string(),
                    last_handshake_seconds: *age,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn node(
        name: &str,
        site: &str,
        heartbeat: Option<&str>,
        apps: Vec<AppAttachment>,
        st: Vec<AppStatus>,
    ) -> MeshNode {
        let mut n = MeshNode::new(
            name,
            MeshNodeSpec {
                site: site.into(),
                apps,
            },
        );
        n.status = Some(MeshNodeStatus {
            heartbeat: heartbeat.map(String::from),
            apps: st,
            ..Default::default()
        });
        n
    }

    /// Three nodes: n1 and n2 at `local` with a fresh web link and a db link
    /// only n1 saw a handshake on, long ago; n3 at `edge` is lost, with a
    /// web link never handshaken; on n2 web is a transit placement linked
    /// to db.
    pub(crate) fn sample() -> Vec<MeshNode> {
        let hb = Some("2025-01-01T00:59:58Z");
        vec![
            node(
                "n1",
                "local",
                hb,
                vec![
                    att("demo/db", &["demo/db-1"], &["n2"], &[]),
                    att("demo/web", &["demo/web-1"], &["n2", "n3"], &[]),
                ],
                vec![
                    status("demo/db", &[("n2", Some(400))]),
                    status("demo/web", &[("n2", Some(7)), ("n3", None)]),
                ],
            ),
            node(
                "n2",
                "local",
                hb,
                vec![
                    att("demo/db", &["demo/db-2"], &["n1"], &["demo/web"]),
                    att("demo/web", &[], &["n1", "n3"], &["demo/db"]),
                ],
                vec![
                    status("demo/db", &[("n1", None)]),
                    status("demo/web", &[("n1", Some(5))]),
                ],
            ),
            node(
                "n3",
                "edge",
                Some("2025-01-01T00:50:00Z"),
                vec![att("demo/web", &["demo/web-3"], &["n1", "n2"], &[])],
                vec![],
            ),
        ]
    }

    #[test]
    fn links_merge_both_ends_and_classify_handshakes() {
        let g = build(&sample(), None, now());
        let l: Vec<(&str, &str, &str, Option<u64>, Handshake)> = g
            .links
            .iter()
            .map(|l| {
                (
                    l.a.as_str(),
                    l.b.as_str(),
                    l.app.as_str(),
                    l.age,
                    l.handshake,
                )
            })
            .collect();
        assert_eq!(
            l,
            [
                ("n1", "n2", "demo/db", Some(400), Handshake::Stale),
                ("n1", "n2", "demo/web", Some(5), Handshake::Fresh),
                ("n1", "n3", "demo/web", None, Handshake::Never),
                ("n2", "n3", "demo/web", None, Handshake::Never),
            ]
        );
        assert_eq!(Handshake::of(Some(179)), Handshake::Fresh);
        assert_eq!(Handshake::of(Some(180)), Handshake::Stale);
    }

    #[test]
    fn sites_lost_nodes_transit_and_app_links() {
        let g = build(&sample(), None, now());
        assert_eq!(
            g.sites,
            [
                Site {
                    name: "edge".into(),
                    nodes: vec!["n3".into()]
                },
                Site {
                    name: "local".into(),
                    nodes: vec!["n1".into(), "n2".into()]
                },
            ]
        );
        assert!(g.node("n3").unwrap().lost);
        assert!(!g.node("n1").unwrap().lost);
        let n2 = g.node("n2").unwrap();
        let web = n2.apps.iter().find(|p| p.app == "demo/web").unwrap();
        assert!(web.transit);
        assert_eq!(web.links, ["demo/db"]);
        assert!(!n2.apps.iter().find(|p| p.app == "demo/db").unwrap().transit);
        assert_eq!(g.apps, ["demo/db", "demo/web"]);
    }

    #[test]
    fn an_app_filter_keeps_its_nodes_and_links_only() {
        let g = build(&sample(), Some("db"), now());
        assert_eq!(g.nodes.len(), 2);
        assert_eq!(g.links.len(), 1);
        assert_eq!(g.apps, ["demo/db"]);
        assert!(app_matches("demo/db", "demo/db"));
        assert!(!app_matches("demo/db", "other/db"));
        assert!(!app_matches("demo/dbx", "db"));
    }

    #[test]
    fn peers_that_are_no_meshnode_here_are_external() {
        let nodes = vec![node(
            "n1",
            "local",
            Some("2025-01-01T00:59:58Z"),
            vec![att("demo/web", &["w"], &["far-1"], &[])],
            vec![status("demo/web", &[("far-1", Some(3))])],
        )];
        let g = build(&nodes, None, now());
        let far = g.node("far-1").unwrap();
        assert!(far.external && !far.lost);
        assert_eq!(far.site, "remote");
        assert_eq!(g.links[0].handshake, Handshake::Fresh);
    }
}
