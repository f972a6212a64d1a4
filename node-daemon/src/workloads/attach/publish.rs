//! What the run loop tells the attach server after each pass: one
//! [`Outcome`] per registered workload, decided from the pass's status, the
//! MeshNode spec and the workload's own `weft0` (pure but for the link
//! reader, which is injected so tests need no namespaces).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use weft_api::attach::{Attachment, WorkloadRef};
use weft_api::{AppSelector, MeshNode, MeshNodeStatus};

use super::registry::{key, Outcome};
use crate::core::state::{RESOLVER_ADDRESS, WORKLOAD_GATEWAY, WORKLOAD_IFNAME};

/// The workload end of an attachment as seen inside the workload's netns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkInfo {
    /// MAC address (`aa:bb:...`).
    pub mac: String,
    /// IPv4 addresses on the interface.
    pub addresses: Vec<Ipv4Addr>,
}

/// Reads the workload end of an attachment from a netns path.
pub type LinkReader = Box<dyn Fn(&str) -> Option<LinkInfo> + Send>;

/// What decides whether a registered workload belongs to some app.
#[derive(Clone, Copy, Debug)]
pub struct Claims<'a> {
    /// `namespace/name` → labels of every announced workload.
    pub announced: &'a BTreeMap<String, BTreeMap<String, String>>,
    /// Whether a workload missing from `announced` belongs to no app.
    pub complete: bool,
    /// The selectors of the apps of the registered workloads' namespaces
    /// that span this node's site, from the apps themselves (the daemon's
    /// MeshApp watch, or the standalone operator's selector files; never
    /// the MeshNode, which holds only this node's apps). `None`: cannot
    /// tell yet.
    pub selectors: Option<&'a [AppSelector]>,
    /// Announcements too recent to trust any view of the apps about.
    pub unsettled: &'a BTreeSet<String>,
    /// Whether the app netns have their resolver (see `crate::dns`).
    pub dns: bool,
}

/// Decides the outcome of every registered workload:
/// - not announced, when announcements are `complete` → [`Outcome::NotMeshed`]
///   (in standalone mode the announcement is the Pod object: no app can
///   select a workload that was never announced);
/// - announced, not in `unsettled`, and no app of `selectors` claims it →
///   [`Outcome::NotMeshed`], without waiting for the operator to plan it
///   (with no `selectors`, or no MeshNode, nothing is known: it waits);
/// - status gives it an app and address, and `weft0` in its netns carries
///   that address → [`Outcome::Attached`];
/// - otherwise nothing yet (an ADD keeps waiting).
pub fn outcomes(
    registered: &[WorkloadRef],
    claims: &Claims<'_>,
    spec: Option<&MeshNode>,
    status: &MeshNodeStatus,
    read_link: &dyn Fn(&str) -> Option<LinkInfo>,
) -> BTreeMap<String, Outcome> {
    let Claims {
        announced,
        complete,
        selectors,
        unsettled,
        dns,
    } = *claims;
    let mut out = BTreeMap::new();
    for r in registered {
        let k = key(r);
        let Some(labels) = announced.get(&k) else {
            if complete {
                out.insert(k, Outcome::NotMeshed);
            }
            continue;
        };
        let claimed = match (spec, selectors) {
            (Some(_), Some(sel)) => sel.iter().any(|a| a.claims(&r.namespace, labels)),
            // Cannot tell: a workload of an app must never start unmeshed.
            _ => true,
        };
        if !claimed {
            // Any view of the apps may lag behind an app created together
            // with this workload (the operator's, or a watch stream behind
            // the pod's): trust "no app" only after a while.
            if !unsettled.contains(&k) {
                out.insert(k, Outcome::NotMeshed);
            }
            continue;
        }
        let Some(w) = status
            .workloads
            .iter()
            .find(|w| w.namespace == r.namespace && w.name == r.name)
        else {
            continue;
        };
        let (Some(app), Some(address)) = (&w.app, &w.address) else {
            continue;
        };
        let Ok(ip) = address.parse::<Ipv4Addr>() else {
            continue;
        };
        let Some(att) = spec.and_then(|s| s.spec.apps.iter().find(|a| &a.app == app)) else {
            continue;
        };
        let range = att.address_space.clone();
        let dns = dns.then(|| resolver_of(att)).flatten();
        let Some(link) = read_link(&r.netns) else {
            continue;
        };
        if !link.addresses.contains(&ip) {
            continue;
        }
        out.insert(
            k,
            Outcome::Attached(Attachment {
                app: app.clone(),
                interface: WORKLOAD_IFNAME.into(),
                mac: link.mac,
                address: format!("{ip}/32"),
                gateway: WORKLOAD_GATEWAY.to_string(),
                routes: vec![range],
                dns,
            }),
        );
    }
    out
}

/// The app's resolver as a workload's CNI result names it: the fixed
/// resolver address, and the app's zone to search.
fn resolver_of(att: &weft_api::AppAttachment) -> Option<weft_api::attach::AttachDns> {
    let (ns, name) = att.app.split_once('/')?;
    Some(weft_api::attach::AttachDns {
        nameservers: vec![RESOLVER_ADDRESS.to_string()],
        search: vec![format!("{name}.{ns}.weft")],
    })
}

/// Reads `weft0` inside the network namespace at `netns_path`, from a
/// short-lived thread that enters it (the caller's namespace is untouched).
/// `None` when the namespace or the interface is missing.
pub fn read_workload_link(netns_path: &str) -> Option<LinkInfo> {
    if netns_path.is_empty() {
        return None;
    }
    let path = netns_path.to_string();
    std::thread::Builder::new()
        .name("weft0-probe".into())
        .spawn(move || -> Option<LinkInfo> {
            let f = std::fs::File::open(&path).ok()?;
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
            let mut info: Option<LinkInfo> = None;
            for ifa in nix::ifaddrs::getifaddrs().ok()? {
                if ifa.interface_name != WORKLOAD_IFNAME {
                    continue;
                }
                let entry = info.get_or_insert_with(LinkInfo::default);
                if let Some(a) = ifa.address.as_ref() {
                    if let Some(l) = a.as_link_addr() {
                        if let Some(mac) = l.addr() {
                            entry.mac = mac
                                .iter()
                                .map(|b| format!("{b:02x}"))
                                .collect::<Vec<_>>()
                                .join(":");
                        }
                    } else if let Some(v4) = a.as_sockaddr_in() {
                        entry.addresses.push(v4.ip());
                    }
                }
            }
            info.filter(|i| !i.mac.is_empty())
        })
        .ok()?
        .join()
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_api::{AppAttachment, AppSelector, MeshNodeSpec, WorkloadStatus};

    type Announced = BTreeMap<String, BTreeMap<String, String>>;

    /// `demo/<name>` announced with `weft.dev/app: <app>`.
    fn announced(name: &str, app: &str) -> Announced {
        [(
            format!("demo/{name}"),
            [("weft.dev/app".to_string(), app.to_string())].into(),
        )]
        .into()
    }

    fn r(name: &str) -> WorkloadRef {
        WorkloadRef {
            container_id: format!("c-{name}"),
            netns: format!("/run/netns/{name}"),
            namespace: "demo".into(),
            name: name.into(),
        }
    }

    /// The node's tunnel address in `demo/web`: where its resolver is.
    const TUNNEL: &str = "10.100.1.1";

    fn spec() -> MeshNode {
        MeshNode::new(
            "n1",
            MeshNodeSpec {
                site: "local".into(),
                apps: vec![AppAttachment {
                    app: "demo/web".into(),
                    address_space: "10.100.0.0/16".into(),
                    address: format!("{TUNNEL}/16"),
                    ..Default::default()
                }],
            },
        )
    }

    /// The selectors of namespace `demo`: `demo/web` only.
    fn web() -> [AppSelector; 1] {
        [AppSelector {
            app: "demo/web".into(),
            selector: Default::default(),
        }]
    }

    fn status(name: &str, address: Option<&str>) -> MeshNodeStatus {
        MeshNodeStatus {
            workloads: vec![WorkloadStatus {
                name: name.into(),
                namespace: "demo".into(),
                app: address.map(|_| "demo/web".into()),
                address: address.map(Into::into),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn link(ip: &str) -> impl Fn(&str) -> Option<LinkInfo> {
        let ip: Ipv4Addr = ip.parse().unwrap();
        move |p: &str| {
            (p == "/run/netns/p1").then(|| LinkInfo {
                mac: "02:00:00:00:00:01".into(),
                addresses: vec![ip],
            })
        }
    }

    /// The outcome for workload `name` before anything was planned for it
    /// (empty status, no `weft0`).
    fn unplanned(
        name: &str,
        claims: Claims<'_>,
        spec: Option<&MeshNode>,
    ) -> BTreeMap<String, Outcome> {
        outcomes(
            &[r(name)],
            &claims,
            spec,
            &MeshNodeStatus::default(),
            &|_: &str| None,
        )
    }

    #[test]
    fn attached_once_status_and_link_agree() {
        let announced = announced("p1", "web");
        let o = outcomes(
            &[r("p1")],
            &Claims {
                announced: &announced,
                complete: true,
                selectors: None,
                unsettled: &BTreeSet::new(),
                dns: true,
            },
            Some(&spec()),
            &status("p1", Some("10.100.1.2")),
            &link("10.100.1.2"),
        );
        assert_eq!(
            o["demo/p1"],
            Outcome::Attached(Attachment {
                app: "demo/web".into(),
                interface: "weft0".into(),
                mac: "02:00:00:00:00:01".into(),
                address: "10.100.1.2/32".into(),
                gateway: "169.254.1.1".into(),
                routes: vec!["10.100.0.0/16".into()],
                dns: Some(weft_api::attach::AttachDns {
                    nameservers: vec!["169.254.1.53".into()],
                    search: vec!["web.demo.weft".into()],
                }),
            })
        );
    }

    #[test]
    fn nothing_yet_while_unplanned_or_unwired() {
        let announced = announced("p1", "web");
        // Planned nowhere yet.
        assert!(outcomes(
            &[r("p1")],
            &Claims {
                announced: &announced,
                complete: true,
                selectors: None,
                unsettled: &BTreeSet::new(),
                dns: false,
            },
            Some(&spec()),
            &status("p1", None),
            &link("10.100.1.2")
        )
        .is_empty());
        // Planned, but weft0 does not carry the address yet.
        assert!(outcomes(
            &[r("p1")],
            &Claims {
                announced: &announced,
                complete: true,
                selectors: None,
                unsettled: &BTreeSet::new(),
                dns: false,
            },
            Some(&spec()),
            &status("p1", Some("10.100.1.2")),
            &link("10.100.1.9")
        )
        .is_empty());
        // No spec known.
        assert!(outcomes(
            &[r("p1")],
            &Claims {
                announced: &announced,
                complete: true,
                selectors: None,
                unsettled: &BTreeSet::new(),
                dns: false,
            },
            None,
            &status("p1", Some("10.100.1.2")),
            &link("10.100.1.2")
        )
        .is_empty());
    }

    #[test]
    fn a_registered_workload_nobody_announced_is_not_meshed() {
        let o = unplanned(
            "p2",
            Claims {
                announced: &Announced::new(),
                complete: true,
                selectors: None,
                unsettled: &BTreeSet::new(),
                dns: false,
            },
            Some(&spec()),
        );
        assert_eq!(o["demo/p2"], Outcome::NotMeshed);
        // A lagging watch may not have seen it yet: wait instead.
        let o = unplanned(
            "p2",
            Claims {
                announced: &Announced::new(),
                complete: false,
                selectors: None,
                unsettled: &BTreeSet::new(),
                dns: false,
            },
            Some(&spec()),
        );
        assert!(o.is_empty(), "{o:?}");
    }

    #[test]
    fn a_workload_no_app_selector_claims_passes_at_once() {
        // Announced, but labelled for an app its namespace does not have:
        // no need to wait for the operator.
        let o = unplanned(
            "p3",
            Claims {
                announced: &announced("p3", "billing"),
                complete: false,
                selectors: Some(&web()),
                unsettled: &BTreeSet::new(),
                dns: false,
            },
            Some(&spec()),
        );
        assert_eq!(o["demo/p3"], Outcome::NotMeshed);
        // No app at all in its namespace: the same.
        let o = unplanned(
            "p3",
            Claims {
                announced: &announced("p3", "billing"),
                complete: false,
                selectors: Some(&[]),
                unsettled: &BTreeSet::new(),
                dns: false,
            },
            Some(&spec()),
        );
        assert_eq!(o["demo/p3"], Outcome::NotMeshed);
        // Claimed by demo/web but not planned yet: keep waiting.
        let o = unplanned(
            "p3",
            Claims {
                announced: &announced("p3", "web"),
                complete: false,
                selectors: Some(&web()),
                unsettled: &BTreeSet::new(),
                dns: false,
            },
            Some(&spec()),
        );
        assert!(o.is_empty(), "{o:?}");
        // No MeshNode yet: nothing is known, keep waiting.
        let o = unplanned(
            "p3",
            Claims {
                announced: &announced("p3", "billing"),
                complete: false,
                selectors: Some(&web()),
                unsettled: &BTreeSet::new(),
                dns: false,
            },
            None,
        );
        assert!(o.is_empty(), "{o:?}");
    }

    #[test]
    fn without_selectors_no_workload_passes_as_of_no_app() {
        // The source cannot tell yet (the MeshApp watch has not listed, a
        // selector file is unreadable): a settled workload still waits,
        // whatever its MeshNode lists.
        for app in ["billing", "web"] {
            let o = unplanned(
                "p6",
                Claims {
                    announced: &announced("p6", app),
                    complete: true,
                    selectors: None,
                    unsettled: &BTreeSet::new(),
                    dns: false,
                },
                Some(&spec()),
            );
            assert!(o.is_empty(), "{app}: {o:?}");
        }
    }

    #[test]
    fn no_app_is_trusted_only_once_the_workload_settled() {
        let unsettled: BTreeSet<String> = ["demo/p5".to_string()].into();
        let o = unplanned(
            "p5",
            Claims {
                announced: &announced("p5", "billing"),
                complete: true,
                selectors: Some(&web()),
                unsettled: &unsettled,
                dns: false,
            },
            Some(&spec()),
        );
        assert!(
            o.is_empty(),
            "the selectors may not show its app yet: {o:?}"
        );
        let o = unplanned(
            "p5",
            Claims {
                announced: &announced("p5", "billing"),
                complete: true,
                selectors: Some(&web()),
                unsettled: &BTreeSet::new(),
                dns: false,
            },
            Some(&spec()),
        );
        assert_eq!(o["demo/p5"], Outcome::NotMeshed);
    }

    #[test]
    fn a_workload_of_an_app_its_meshnode_does_not_list_yet_waits() {
        // The pod's app was created a moment ago: the MeshNode does not
        // list it yet, the selectors (watch or file) do.
        let billing = [AppSelector {
            app: "demo/billing".into(),
            selector: Default::default(),
        }];
        let o = unplanned(
            "p4",
            Claims {
                announced: &announced("p4", "billing"),
                complete: false,
                selectors: Some(&billing),
                unsettled: &BTreeSet::new(),
                dns: false,
            },
            Some(&spec()),
        );
        assert!(o.is_empty(), "claimed: wait for the operator: {o:?}");
    }

    #[test]
    fn reading_a_missing_namespace_gives_none() {
        assert_eq!(read_workload_link(""), None);
        assert_eq!(read_workload_link("/nonexistent/netns"), None);
    }
}
