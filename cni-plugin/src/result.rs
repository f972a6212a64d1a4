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
    Ok(r)
}
