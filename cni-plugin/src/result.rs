//! Builds the result: the previous plugin's result with Weft's interface,
//! address and app route appended (the primary network is left as it was).

use serde_json::{json, Value};
use weft_api::attach::Attachment;

use crate::config::NetConf;
use crate::error::CniError;

/// The previous result unchanged (a pod of no app passes through).
pub fn passthrough(conf: &NetConf) -> Value {
    let mut r = conf.prev_result.clone().unwrap_or_else(|| json!({}));
    r["cniVersion"] = json!(conf.cni_version);
    r
}

/// The previous result plus the attachment.
pub fn with_attachment(conf: &NetConf, a: &Attachment, sandbox: &str) -> Result<Value, CniError> {
    let mut r = passthrough(conf);
    let obj = r
        .as_object_mut()
        .ok_or_else(|| CniError::invalid_config("prevResult must be an object".into()))?;
    let interfaces = obj.entry("interfaces").or_insert_with(|| json!([]));
    let list = interfaces
        .as_array_mut()
        .ok_or_else(|| CniError::invalid_config("prevResult.interfaces must be a list".into()))?;
    // ADD is idempotent: a repeated ADD must not list the interface twice.
    list.retain(|i| !(i["name"] == json!(a.interface) && i["sandbox"] == json!(sandbox)));
    list.push(json!({"name": a.interface, "mac": a.mac, "sandbox": sandbox}));
    let index = list.len() - 1;
    let ips = obj.entry("ips").or_insert_with(|| json!([]));
    let ips = ips
        .as_array_mut()
        .ok_or_else(|| CniError::invalid_config("prevResult.ips must be a list".into()))?;
    ips.retain(|i| i["address"] != json!(a.address));
    ips.push(json!({"address": a.address, "interface": index}));
    let routes = obj.entry("routes").or_insert_with(|| json!([]));
    let routes = routes
        .as_array_mut()
        .ok_or_else(|| CniError::invalid_config("prevResult.routes must be a list".into()))?;
    for dst in &a.routes {
        routes.retain(|r| r["dst"] != json!(dst));
        routes.push(json!({"dst": dst, "gw": a.gateway}));
    }
    Ok(r)
}
