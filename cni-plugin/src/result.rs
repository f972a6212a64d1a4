//! Builds the result: the previous plugin's result with Weft's interface,
//! address and app route appended (the primary network is left as it was).

use serde_json::{json, Map, Value};
use weft_api::attach::Attachment;

use crate::config::NetConf;
use crate::error::CniError;

/// The previous result unchanged (a pod of no app passes through).
pub fn passthrough(conf: &NetConf) -> Value {
    let mut r = conf.prev_result.clone().unwrap_or_else(|| json!({}));
    r["cniVersion"] = json!(conf.cni_version);
    r
}

/// The list `key` of `obj`, created when missing or null.
fn list<'a>(obj: &'a mut Map<String, Value>, key: &str) -> Result<&'a mut Vec<Value>, CniError> {
    let v = obj.entry(key).or_insert(Value::Null);
    if v.is_null() {
        *v = json!([]);
    }
    v.as_array_mut()
        .ok_or_else(|| CniError::invalid_config(format!("prevResult.{key} must be a list")))
}

/// The previous result plus the attachment.
pub fn with_attachment(conf: &NetConf, a: &Attachment, sandbox: &str) -> Result<Value, CniError> {
    let mut r = passthrough(conf);
    let obj = r
        .as_object_mut()
        .ok_or_else(|| CniError::invalid_config("prevResult must be an object".into()))?;
    let interfaces = list(obj, "interfaces")?;
    // ADD is idempotent: a repeated ADD must not list the interface twice.
    interfaces.retain(|i| !(i["name"] == json!(a.interface) && i["sandbox"] == json!(sandbox)));
    interfaces.push(json!({"name": a.interface, "mac": a.mac, "sandbox": sandbox}));
    let index = interfaces.len() - 1;
    let ips = list(obj, "ips")?;
    ips.retain(|i| i["address"] != json!(a.address));
    ips.push(json!({"address": a.address, "interface": index}));
    let routes = list(obj, "routes")?;
    for dst in &a.routes {
        routes.retain(|r| r["dst"] != json!(dst));
        routes.push(json!({"dst": dst, "gw": a.gateway}));
    }
    // The app's resolver, as the spec's `dns` (runtimes such as podman write
    // it into resolv.conf; the kubelet ignores it). A previous plugin's
    // nameservers stay after the app's.
    if let Some(d) = &a.dns {
        let prev = obj.get("dns").cloned().unwrap_or_else(|| json!({}));
        let merge = |key: &str, ours: &[String]| {
            let mut all: Vec<Value> = ours.iter().map(|x| json!(x)).collect();
            for v in prev[key].as_array().into_iter().flatten() {
                if !all.contains(v) {
                    all.push(v.clone());
                }
            }
            Value::Array(all)
        };
        let mut dns = prev.as_object().cloned().unwrap_or_default();
        dns.insert("nameservers".into(), merge("nameservers", &d.nameservers));
        dns.insert("search".into(), merge("search", &d.search));
        obj.insert("dns".into(), Value::Object(dns));
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_api::attach::AttachDns;

    #[test]
    fn the_apps_resolver_comes_first_and_the_primary_networks_stays() {
        let conf = NetConf {
            cni_version: "1.0.0".into(),
            prev_result: Some(json!({
                "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"], "options": ["ndots:5"]}
            })),
            daemon_socket: String::new(),
        };
        let a = Attachment {
            app: "demo/web".into(),
            interface: "weft0".into(),
            mac: "02:00:00:00:00:01".into(),
            address: "10.100.1.2/32".into(),
            gateway: "169.254.1.1".into(),
            routes: vec!["10.100.0.0/16".into()],
            dns: Some(AttachDns {
                nameservers: vec!["10.100.1.1".into()],
                search: vec!["web.demo.weft".into()],
            }),
        };
        let r = with_attachment(&conf, &a, "/var/run/netns/x").unwrap();
        assert_eq!(r["dns"]["nameservers"], json!(["10.100.1.1", "10.96.0.10"]));
        assert_eq!(
            r["dns"]["search"],
            json!(["web.demo.weft", "svc.cluster.local"])
        );
        assert_eq!(r["dns"]["options"], json!(["ndots:5"]));
        // Without a resolver the previous result's dns is untouched.
        let r = with_attachment(&conf, &Attachment { dns: None, ..a }, "/x").unwrap();
        assert_eq!(r["dns"]["nameservers"], json!(["10.96.0.10"]));
    }
}
