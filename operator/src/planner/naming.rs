//! Stable names derived from an app: its id, interface and netns names.
//!
//! `app_id` = the first 10 characters of lowercase, unpadded RFC 4648 base32
//! of `sha256("namespace/name")`. An app keeps the id its previous MeshNode
//! specs carry; a newcomer whose id collides with a taken one tries
//! `sha256("namespace/name#1")`, `#2`, ... until free.

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};
use weft_api::MeshNodeSpec;

use super::snapshot::ObjectKey;

/// Length of an app id (50 bits of the hash).
pub const APP_ID_LEN: usize = 10;
/// Prefix of every app interface name.
pub const INTERFACE_PREFIX: &str = "wf";
/// Longest interface name Linux accepts.
pub const MAX_IFNAME_LEN: usize = 15;

const BASE32_ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// Lowercase RFC 4648 base32 without padding.
pub fn base32_lower(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(5) * 8);
    let mut buffer: u32 = 0;
    let mut bits = 0u32;
    for &byte in data {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(
                BASE32_ALPHABET[((buffer >> bits) & 31) as usize],
            ));
        }
        buffer &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(char::from(
            BASE32_ALPHABET[((buffer << (5 - bits)) & 31) as usize],
        ));
    }
    out
}

/// The id candidate number `attempt` (0 = the plain hash) of an app.
pub fn app_id_candidate(app: &ObjectKey, attempt: u32) -> String {
    let input = if attempt == 0 {
        app.to_string()
    } else {
        format!("{app}#{attempt}")
    };
    let digest = Sha256::digest(input.as_bytes());
    let mut id = base32_lower(&digest);
    id.truncate(APP_ID_LEN);
    id
}

/// WireGuard interface name of an app (`wf` + id, 12 bytes).
pub fn interface_name(app_id: &str) -> String {
    format!("{INTERFACE_PREFIX}{app_id}")
}

/// Name of an app link's end inside one app's netns: `wx` + the OTHER
/// app's id (12 bytes), unique in that netns because each other app gets
/// at most one link.
pub fn app_link_name(other_app_id: &str) -> String {
    format!("wx{other_app_id}")
}

/// Network namespace of an app on a node.
pub fn netns_name(node: &str, app_id: &str) -> String {
    format!("weft-{node}-{app_id}")
}

fn usable_previous_id(id: &str) -> bool {
    !id.is_empty()
        && INTERFACE_PREFIX.len() + id.len() <= MAX_IFNAME_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Assigns an id to every app: previous ids first (in app order), then
/// newcomers, skipping taken ids.
pub fn assign_app_ids<'a>(
    apps: impl IntoIterator<Item = &'a ObjectKey>,
    previous_specs: &BTreeMap<String, MeshNodeSpec>,
) -> BTreeMap<ObjectKey, String> {
    let apps: Vec<&ObjectKey> = apps.into_iter().collect();
    // The id an app had, taken from the lowest-named node that carries it.
    let mut previous: BTreeMap<String, String> = BTreeMap::new();
    for spec in previous_specs.values() {
        for att in &spec.apps {
            previous
                .entry(att.app.clone())
                .or_insert_with(|| att.app_id.clone());
        }
    }
    let mut taken: BTreeSet<String> = BTreeSet::new();
    let mut ids = BTreeMap::new();
    for app in &apps {
        if let Some(id) = previous.get(&app.to_string()) {
            if usable_previous_id(id) && taken.insert(id.clone()) {
                ids.insert((*app).clone(), id.clone());
            }
        }
    }
    for app in apps {
        if ids.contains_key(app) {
            continue;
        }
        let mut attempt = 0;
        loop {
            let id = app_id_candidate(app, attempt);
            if taken.insert(id.clone()) {
                ids.insert(app.clone(), id);
                break;
            }
            attempt += 1;
        }
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_matches_rfc4648_vectors() {
        assert_eq!(base32_lower(b""), "");
        assert_eq!(base32_lower(b"f"), "my");
        assert_eq!(base32_lower(b"fo"), "mzxq");
        assert_eq!(base32_lower(b"foo"), "mzxw6");
        assert_eq!(base32_lower(b"foob"), "mzxw6yq");
        assert_eq!(base32_lower(b"fooba"), "mzxw6ytb");
        assert_eq!(base32_lower(b"foobar"), "mzxw6ytboi");
    }

    #[test]
    fn interface_name_fits_linux_limit() {
        let id = app_id_candidate(&ObjectKey::new("a-very-long-namespace", "and-name"), 0);
        assert_eq!(id.len(), APP_ID_LEN);
        assert!(interface_name(&id).len() <= MAX_IFNAME_LEN);
    }

    #[test]
    fn colliding_newcomer_takes_next_candidate() {
        let old = ObjectKey::new("ns", "old");
        let new = ObjectKey::new("ns", "new");
        // Pretend `old` already holds the id `new` would hash to.
        let mut prev = BTreeMap::new();
        prev.insert(
            "n1".to_string(),
            MeshNodeSpec {
                site: "local".into(),
                apps: vec![weft_api::AppAttachment {
                    app: old.to_string(),
                    app_id: app_id_candidate(&new, 0),
                    ..Default::default()
                }],
            },
        );
        let ids = assign_app_ids([&old, &new], &prev);
        assert_eq!(ids[&old], app_id_candidate(&new, 0));
        assert_eq!(ids[&new], app_id_candidate(&new, 1));
    }
}
