//! `weft-operator get KIND`: kubectl-like tables read from a state directory.

use std::fs;
use std::path::Path;

use k8s_openapi::jiff::Timestamp;
use serde::de::DeserializeOwned;
use serde::Serialize;
use weft_api::conditions::{self, types};
use weft_api::standalone::{ManifestFileStatus, NodeRegistration, StateDir, StoredStatus};
use weft_api::{
    MeshAppStatus, MeshHubStatus, MeshNode, MeshNodeStatus, MeshPolicyStatus, MeshSiteStatus,
};

use weft_api::validation::printable;

use super::files::read_json;

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Output {
    /// The usual columns.
    #[default]
    Table,
    /// Extra columns.
    Wide,
    /// Everything, as JSON.
    Json,
}

/// Lays out rows under a header with two spaces between columns.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    // Names and messages come from user input: a newline or an escape
    // sequence in one must not break the table or the terminal.
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| printable(c, usize::MAX)).collect())
        .collect();
    let rows = rows.as_slice();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let last = cells.len().saturating_sub(1);
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i == last {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}   ", w = widths[i]));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(header.to_vec());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

/// kubectl-style age: `42s`, `5m`, `3h`, `2d`.
pub fn age(since: &str, now: Timestamp) -> String {
    let Ok(t) = since.parse::<Timestamp>() else {
        return "<unknown>".into();
    };
    let secs = now.duration_since(t).as_secs().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn stored<S: DeserializeOwned>(
    state: &StateDir,
    plural: &str,
) -> anyhow::Result<Vec<StoredStatus<S>>> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(state.status_dir(plural)) else {
        return Ok(out);
    };
    for e in entries.flatten() {
        if e.path().extension().is_some_and(|x| x == "json") {
            if let Some(s) = read_json::<StoredStatus<S>>(&e.path())? {
                out.push(s);
            }
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

fn json<T: Serialize>(v: &T) -> anyhow::Result<String> {
    Ok(format!("{}\n", serde_json::to_string_pretty(v)?))
}

fn cond_cells(
    list: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    t: &str,
) -> (String, String, String) {
    match conditions::get(list, t) {
        Some(c) => (c.status.clone(), c.reason.clone(), c.message.clone()),
        None => ("Unknown".into(), String::new(), String::new()),
    }
}

fn split_key(key: &str) -> (String, String) {
    match key.split_once('/') {
        Some((ns, n)) => (ns.into(), n.into()),
        None => (String::new(), key.into()),
    }
}

/// Renders `get KIND` for a state directory.
pub fn render(kind: &str, state: &Path, output: Output, now: Timestamp) -> anyhow::Result<String> {
    let state = StateDir::new(state);
    match kind {
        "meshapps" | "meshapp" | "mapp" => render_stored::<MeshAppStatus>(
            &state,
            "meshapps",
            output,
            &[
                "NAMESPACE",
                "NAME",
                "READY",
                "NODES",
                "PEERS",
                "CIDR",
                "AGE",
            ],
            |s| {
                let (ns, name) = split_key(&s.key);
                let (ready, reason, message) = cond_cells(&s.status.conditions, types::READY);
                let cells = vec![
                    ns,
                    name,
                    ready,
                    s.status.nodes.clone().unwrap_or_default(),
                    s.status.peers.clone().unwrap_or_default(),
                    s.status
                        .address_space
                        .clone()
                        .unwrap_or_else(|| "<none>".into()),
                    age(&s.first_seen, now),
                ];
                (cells, [reason, message])
            },
        ),
        "meshpolicies" | "meshpolicy" | "mpol" => render_stored::<MeshPolicyStatus>(
            &state,
            "meshpolicies",
            output,
            &["NAMESPACE", "NAME", "ACCEPTED", "AGE"],
            |s| {
                let (ns, name) = split_key(&s.key);
                let (ok, reason, message) = cond_cells(&s.status.conditions, types::ACCEPTED);
                (
                    vec![ns, name, ok, age(&s.first_seen, now)],
                    [reason, message],
                )
            },
        ),
        "meshsites" | "meshsite" | "msite" => render_stored::<MeshSiteStatus>(
            &state,
            "meshsites",
            output,
            &["NAME", "NODES", "READY", "AGE"],
            |s| {
                let (ready, reason, message) = cond_cells(&s.status.conditions, types::READY);
                let cells = vec![
                    s.key.clone(),
                    s.status.nodes.to_string(),
                    ready,
                    age(&s.first_seen, now),
                ];
                (cells, [reason, message])
            },
        ),
        "meshhubs" | "meshhub" | "mhub" => render_stored::<MeshHubStatus>(
            &state,
            "meshhubs",
            output,
            &["NAME", "MEMBERS", "ACCEPTED", "AGE"],
            |s| {
                let (ok, reason, message) = cond_cells(&s.status.conditions, types::ACCEPTED);
                let cells = vec![
                    s.key.clone(),
                    s.status.members.to_string(),
                    ok,
                    age(&s.first_seen, now),
                ];
                (cells, [reason, message])
            },
        ),
        "meshnodes" | "meshnode" | "mnode" => render_nodes(&state, output, now),
        "manifests" | "manifest" => render_manifests(&state, output),
        other => anyhow::bail!(
            "unknown kind {other:?}: use meshapps, meshnodes, meshpolicies, meshsites, meshhubs or manifests"
        ),
    }
}

/// One user kind's stored statuses as JSON or a table; `cells` gives a row's
/// columns and its condition's reason and message (shown with `-o wide`).
fn render_stored<S: DeserializeOwned + Serialize>(
    state: &StateDir,
    plural: &str,
    output: Output,
    columns: &[&str],
    cells: impl Fn(&StoredStatus<S>) -> (Vec<String>, [String; 2]),
) -> anyhow::Result<String> {
    let items = stored::<S>(state, plural)?;
    if output == Output::Json {
        return json(&items);
    }
    let wide = output == Output::Wide;
    let mut header = columns.to_vec();
    if wide {
        header.extend(["REASON", "MESSAGE"]);
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|s| {
            let (mut row, why) = cells(s);
            if wide {
                row.extend(why);
            }
            row
        })
        .collect();
    Ok(table(&header, &rows))
}

/// Every manifest file and what is wrong with it: one row per file, or
/// with `-o wide` one row per problem (document, object, field, message).
fn render_manifests(state: &StateDir, output: Output) -> anyhow::Result<String> {
    let files = read_json::<Vec<ManifestFileStatus>>(&state.manifest_status())?.unwrap_or_default();
    if output == Output::Json {
        return json(&files);
    }
    if output == Output::Wide {
        let mut rows = Vec::new();
        for f in &files {
            if f.errors.is_empty() {
                rows.push(vec![
                    f.file.clone(),
                    String::new(),
                    f.objects.join(", "),
                    String::new(),
                    "OK".into(),
                ]);
            }
            for e in &f.errors {
                rows.push(vec![
                    f.file.clone(),
                    e.document.map_or_else(String::new, |d| d.to_string()),
                    e.object.clone().unwrap_or_default(),
                    e.field.clone(),
                    e.message.clone(),
                ]);
            }
        }
        return Ok(table(
            &["FILE", "DOCUMENT", "OBJECT", "FIELD", "MESSAGE"],
            &rows,
        ));
    }
    let rows: Vec<Vec<String>> = files
        .iter()
        .map(|f| {
            let first = f.errors.first().map_or_else(String::new, |e| {
                let doc = e
                    .document
                    .map_or_else(String::new, |d| format!("document {d}: "));
                let field = if e.field.is_empty() {
                    String::new()
                } else {
                    format!("{}: ", e.field)
                };
                format!("{doc}{field}{}", e.message)
            });
            vec![
                f.file.clone(),
                f.objects.len().to_string(),
                if f.errors.is_empty() {
                    "OK".into()
                } else {
                    format!("{} problems", f.errors.len())
                },
                first,
            ]
        })
        .collect();
    Ok(table(
        &["FILE", "OBJECTS", "STATUS", "FIRST PROBLEM"],
        &rows,
    ))
}

fn render_nodes(state: &StateDir, output: Output, now: Timestamp) -> anyhow::Result<String> {
    let mut names: Vec<String> = fs::read_dir(state.nodes_dir())
        .map(|it| {
            it.flatten()
                .filter(|e| e.path().join("node.json").is_file())
                .filter_map(|e| e.file_name().to_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let mut objects = Vec::new();
    let mut rows = Vec::new();
    for name in names {
        let reg = read_json::<NodeRegistration>(&state.registration(&name))
            .ok()
            .flatten()
            .unwrap_or_default();
        let status = read_json::<MeshNodeStatus>(&state.node_status(&name))
            .ok()
            .flatten();
        let spec = read_json::<MeshNode>(&state.meshnode(&name)).ok().flatten();
        let created = fs::metadata(state.registration(&name))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| Timestamp::try_from(t).ok())
            .map_or_else(|| "<unknown>".to_string(), |t| age(&t.to_string(), now));
        let problems = super::registration::errors(&name, &reg);
        let (ready, reason, message) = if !problems.is_empty() {
            let listed: Vec<String> = problems.iter().map(|(f, m)| format!("{f}: {m}")).collect();
            (
                "False".into(),
                "InvalidRegistration".into(),
                listed.join("; "),
            )
        } else {
            status
                .as_ref()
                .map(|s| cond_cells(&s.conditions, types::READY))
                .unwrap_or(("Unknown".into(), String::new(), "no status reported".into()))
        };
        let apps_total = spec.as_ref().map_or(0, |m| m.spec.apps.len());
        let mut row = vec![
            name.clone(),
            if reg.site.is_empty() {
                "local".into()
            } else {
                reg.site.clone()
            },
            format!(
                "{}/{}",
                status.as_ref().map_or(0, |s| s.apps_ready),
                apps_total
            ),
            status
                .as_ref()
                .and_then(|s| s.dataplane)
                .map_or_else(|| "<unknown>".into(), |d| format!("{d:?}")),
            ready,
            created,
        ];
        if output == Output::Wide {
            row.extend([
                reg.address.clone(),
                spec.as_ref()
                    .and_then(|m| m.metadata.generation)
                    .map_or_else(String::new, |g| g.to_string()),
                status
                    .as_ref()
                    .and_then(|s| s.observed_generation)
                    .map_or_else(String::new, |g| g.to_string()),
                reason,
                message,
            ]);
        }
        rows.push(row);
        objects.push(serde_json::json!({
            "name": name,
            "registration": reg,
            "meshnode": spec,
            "status": status,
        }));
    }
    if output == Output::Json {
        return json(&objects);
    }
    let mut header = vec!["NAME", "SITE", "APPS", "DATAPLANE", "READY", "AGE"];
    if output == Output::Wide {
        header.extend(["ADDRESS", "GENERATION", "OBSERVED", "REASON", "MESSAGE"]);
    }
    Ok(table(&header, &rows))
}
