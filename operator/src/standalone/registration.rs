//! Checks of what a daemon registers in `nodes/<node>/node.json`, the
//! standalone stand-in for a Node object: the API server would refuse a
//! Node with such a name or labels, so the standalone operator does too.

use weft_api::standalone::NodeRegistration;
use weft_api::validation;

/// Problems of a registration found in the node directory `dir_name`, as
/// `(field, message)`.
pub fn errors(dir_name: &str, reg: &NodeRegistration) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Err(e) = validation::node_name(dir_name) {
        out.push(("name".to_string(), format!("node directory {e}")));
    } else if reg.name != dir_name {
        out.push((
            "name".to_string(),
            format!(
                "{:?} differs from its directory {dir_name:?}",
                validation::printable(&reg.name, 80)
            ),
        ));
    }
    if !reg.site.is_empty() {
        if let Err(e) = validation::dns_subdomain(&reg.site) {
            out.push(("site".to_string(), e));
        }
    }
    if reg.address.trim().parse::<std::net::Ipv4Addr>().is_err() {
        out.push((
            "address".to_string(),
            format!(
                "{:?} is not an IPv4 address; peers could not reach the node",
                validation::printable(&reg.address, 80)
            ),
        ));
    }
    for (f, m) in validation::labels(&reg.labels) {
        out.push((format!("labels{f}"), m));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(name: &str, site: &str, address: &str) -> NodeRegistration {
        NodeRegistration {
            name: name.into(),
            site: site.into(),
            address: address.into(),
            labels: Default::default(),
        }
    }

    #[test]
    fn a_good_registration_has_no_problem() {
        assert!(errors("n1", &reg("n1", "", "192.0.2.1")).is_empty());
        assert!(errors("n1", &reg("n1", "edge", "192.0.2.1")).is_empty());
    }

    #[test]
    fn each_bad_field_is_named() {
        let field = |e: Vec<(String, String)>| e.into_iter().map(|(f, _)| f).collect::<Vec<_>>();
        assert_eq!(field(errors("N1", &reg("N1", "", "192.0.2.1"))), ["name"]);
        assert_eq!(field(errors("n1", &reg("n2", "", "192.0.2.1"))), ["name"]);
        assert_eq!(
            field(errors("n1", &reg("n1", "Edge Site", "192.0.2.1"))),
            ["site"]
        );
        assert_eq!(
            field(errors("n1", &reg("n1", "", "not-an-ip"))),
            ["address"]
        );
        let long = "x".repeat(254);
        assert_eq!(field(errors(&long, &reg(&long, "", "192.0.2.1"))), ["name"]);
        let netns_too_long = "x".repeat(240);
        let e = errors(&netns_too_long, &reg(&netns_too_long, "", "192.0.2.1"));
        assert!(e[0].1.contains("at most 239"), "{e:?}");
    }
}
