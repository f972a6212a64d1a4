//! Kubernetes' own rules for names, label keys and label values, and the
//! size bounds Weft holds every outside input to. The API server applies the
//! name rules to every object; the standalone operator, the daemon and the
//! CNI plugin apply the same functions, so both modes refuse the same input
//! with the same words. Each check returns the problem as a sentence that
//! can follow a field path (`metadata.name: ...`).

/// Longest object name Kubernetes accepts (a DNS-1123 subdomain).
pub const MAX_NAME_LEN: usize = 253;
/// Longest DNS-1123 label (namespaces, and the name part of a label key).
pub const MAX_LABEL_LEN: usize = 63;
/// Longest label value.
pub const MAX_LABEL_VALUE_LEN: usize = 63;
/// Most labels one workload or selector may carry (`matchLabels` entries or
/// `matchExpressions`); Kubernetes has no count limit but a 256 KiB total
/// for labels plus annotations, which this stays far below.
pub const MAX_LABELS: usize = 64;
/// Most values one `In`/`NotIn` requirement may list.
pub const MAX_SELECTOR_VALUES: usize = 64;
/// Largest manifest file the standalone operator reads (the API server's
/// request limit is 3 MiB and etcd's object limit 1.5 MiB).
pub const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;
/// Largest node registration or node status file the standalone operator
/// reads.
pub const MAX_NODE_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// Largest MeshNode the operator writes: etcd refuses objects over 1.5 MiB,
/// and a node's daemon reads its MeshNode whole on every change.
pub const MAX_MESHNODE_BYTES: usize = 1024 * 1024;

/// Longest node name: a node's app namespaces are named
/// `weft-<node>-<appId>` (10-character ids) and must fit a 255-byte file
/// name under /run/netns.
pub const MAX_NODE_NAME_LEN: usize = 255 - "weft-".len() - 1 - 10;

/// A node name: a DNS-1123 subdomain short enough for its namespace names.
pub fn node_name(s: &str) -> Result<(), String> {
    dns_subdomain(s)?;
    if s.len() > MAX_NODE_NAME_LEN {
        return Err(format!(
            "{} characters; at most {MAX_NODE_NAME_LEN}, so that its namespace names (weft-<node>-<appId>) fit a file name",
            s.len()
        ));
    }
    Ok(())
}

fn describe(s: &str) -> String {
    // Debug quoting escapes newlines and control characters, so the
    // message itself never carries them.
    let shown: String = s.chars().take(80).collect();
    if shown.len() < s.len() {
        format!("{shown:?}... ({} bytes)", s.len())
    } else {
        format!("{shown:?}")
    }
}

fn alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// A DNS-1123 label: at most 63 lower-case alphanumerics or `-`, starting
/// and ending with an alphanumeric (namespaces, MeshSite names used in
/// interface-free contexts).
pub fn dns_label(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > MAX_LABEL_LEN {
        return Err(format!(
            "{} is longer than {MAX_LABEL_LEN} characters",
            describe(s)
        ));
    }
    let ok = s.chars().all(|c| alnum(c) || c == '-') && s.starts_with(alnum) && s.ends_with(alnum);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{} must consist of lower-case letters, digits and '-', and start and end with a letter or digit (a DNS-1123 label)",
            describe(s)
        ))
    }
}

/// A DNS-1123 subdomain: at most 253 characters, dot-separated DNS labels
/// (object names).
pub fn dns_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > MAX_NAME_LEN {
        return Err(format!(
            "{} is longer than {MAX_NAME_LEN} characters",
            describe(s)
        ));
    }
    let ok = s
        .split('.')
        .all(|part| !part.is_empty() && part.chars().all(|c| alnum(c) || c == '-'))
        && s.starts_with(alnum)
        && s.ends_with(alnum);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{} must consist of lower-case letters, digits, '-' and '.', and start and end with a letter or digit (a DNS-1123 subdomain)",
            describe(s)
        ))
    }
}

fn qualified_name_part(s: &str) -> bool {
    let inner = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    !s.is_empty()
        && s.len() <= MAX_LABEL_LEN
        && s.chars().all(inner)
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// A label key: an optional DNS-1123 subdomain prefix and `/`, then a name
/// of at most 63 alphanumerics, `-`, `_` or `.`, starting and ending with an
/// alphanumeric.
pub fn label_key(s: &str) -> Result<(), String> {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix {
        dns_subdomain(p).map_err(|e| format!("label key {}: prefix {e}", describe(s)))?;
    }
    if qualified_name_part(name) {
        Ok(())
    } else {
        Err(format!(
            "label key {} must be a name of at most {MAX_LABEL_LEN} letters, digits, '-', '_' or '.' starting and ending with a letter or digit, optionally after a DNS subdomain prefix and '/'",
            describe(s)
        ))
    }
}

/// A label value: empty, or at most 63 alphanumerics, `-`, `_` or `.`,
/// starting and ending with an alphanumeric.
pub fn label_value(s: &str) -> Result<(), String> {
    if s.is_empty() || qualified_name_part(s) {
        Ok(())
    } else if s.len() > MAX_LABEL_VALUE_LEN {
        Err(format!(
            "label value {} is longer than {MAX_LABEL_VALUE_LEN} characters",
            describe(s)
        ))
    } else {
        Err(format!(
            "label value {} must be empty or at most {MAX_LABEL_VALUE_LEN} letters, digits, '-', '_' or '.' starting and ending with a letter or digit",
            describe(s)
        ))
    }
}

/// Every problem of a label map, as `(field suffix, message)`: the suffix is
/// `[key]` for the entry concerned (relative to the map's own field).
pub fn labels<'a>(
    map: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut n = 0;
    for (k, v) in map {
        n += 1;
        let field = format!("[{}]", printable(k, 80));
        if let Err(e) = label_key(k) {
            out.push((field.clone(), e));
        }
        if let Err(e) = label_value(v) {
            out.push((field, e));
        }
    }
    if n > MAX_LABELS {
        out.push((String::new(), format!("{n} labels; at most {MAX_LABELS}")));
    }
    out
}

/// `s` with control characters escaped (`\n`, `\u{1b}`) and cut to at most
/// `max` characters, for tables and log fields that must stay one line.
pub fn printable(s: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i >= max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_kubernetes_rules() {
        for good in ["web", "a", "web-1", "a.b.c", &"x".repeat(253)] {
            assert!(dns_subdomain(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Web",
            "a/b",
            "..",
            "a..b",
            "-a",
            "a-",
            "a b",
            "a\nb",
            ".a",
            &"x".repeat(254),
        ] {
            assert!(dns_subdomain(bad).is_err(), "{bad:?}");
        }
        assert!(dns_label("demo").is_ok());
        assert!(dns_label("de.mo").is_err());
        assert!(dns_label(&"x".repeat(64)).is_err());
    }

    #[test]
    fn label_keys_and_values_follow_the_kubernetes_rules() {
        for good in ["app", "weft.dev/app", "a_b.c-d", "k8s.io/x"] {
            assert!(label_key(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "/a",
            "a/",
            "Weft.dev/app",
            "a/b/c",
            "-a",
            "a b",
            &"x".repeat(64),
        ] {
            assert!(label_key(bad).is_err(), "{bad:?}");
        }
        for good in ["", "web", "Web_1.a-b"] {
            assert!(label_value(good).is_ok(), "{good}");
        }
        for bad in ["-a", "a b", "a\n", &"v".repeat(64)] {
            assert!(label_value(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn messages_never_carry_control_characters_or_huge_values() {
        let e = dns_subdomain("a\nb\u{1b}[31m").unwrap_err();
        assert!(!e.chars().any(char::is_control), "{e}");
        let e = label_value(&"v".repeat(10_000_000)).unwrap_err();
        assert!(e.len() < 300, "{}", e.len());
        assert_eq!(printable("a\tb\n", 10), "a\\tb\\n");
        assert_eq!(printable("abcdef", 3), "abc…");
    }
}
