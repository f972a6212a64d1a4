//! `get KIND [NAME]`: kubectl-style tables, or the objects as JSON or YAML.

use anyhow::{bail, Result};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use serde::Serialize;
use weft_api::conditions::types;
use weft_api::{MeshApp, MeshHub, MeshNode, MeshPolicy, MeshSite};
use weft_operator::standalone::get::{age, table};

use crate::source::{Scope, Source};

/// Output format of `get`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Format {
    /// The usual columns.
    #[default]
    Table,
    /// More columns.
    Wide,
    /// The objects as JSON (one object, or a `List`).
    Json,
    /// The objects as YAML.
    Yaml,
}

/// The kinds `get` knows, with kubectl's names for them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// MeshApp.
    Apps,
    /// MeshNode.
    Nodes,
    /// MeshPolicy.
    Policies,
    /// MeshSite.
    Sites,
    /// MeshHub.
    Hubs,
}

impl Kind {
    /// Parses a plural, singular or short name.
    pub fn parse(s: &str) -> Result<Kind> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "meshapps" | "meshapp" | "mapp" | "meshapps.weft.dev" => Kind::Apps,
            "meshnodes" | "meshnode" | "mnode" | "meshnodes.weft.dev" => Kind::Nodes,
            "meshpolicies" | "meshpolicy" | "mpol" | "meshpolicies.weft.dev" => Kind::Policies,
            "meshsites" | "meshsite" | "msite" | "meshsites.weft.dev" => Kind::Sites,
            "meshhubs" | "meshhub" | "mhub" | "meshhubs.weft.dev" => Kind::Hubs,
            other => bail!(
                "unknown kind {other:?}: use meshapps, meshnodes, meshpolicies, meshsites or meshhubs"
            ),
        })
    }

    /// The plural name.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Apps => "meshapps",
            Kind::Nodes => "meshnodes",
            Kind::Policies => "meshpolicies",
            Kind::Sites => "meshsites",
            Kind::Hubs => "meshhubs",
        }
    }
}

/// What to list.
#[derive(Clone, Debug)]
pub struct Query {
    /// The kind.
    pub kind: Kind,
    /// One object only.
    pub name: Option<String>,
    /// Namespaces (ignored for cluster-scoped kinds).
    pub scope: Scope,
    /// Output format.
    pub format: Format,
    /// Keep `metadata.managedFields` in JSON and YAML (kubectl drops them
    /// unless `--show-managed-fields`).
    pub show_managed_fields: bool,
}

/// Lists and renders.
pub fn run(src: &dyn Source, q: &Query, now: Timestamp) -> Result<String> {
    let show_ns = q.scope == Scope::All;
    match q.kind {
        Kind::Apps => render(&pick(src.meshapps(&q.scope)?, q)?, q, show_ns, now),
        Kind::Policies => render(&pick(src.meshpolicies(&q.scope)?, q)?, q, show_ns, now),
        Kind::Nodes => render(&pick(src.meshnodes()?, q)?, q, false, now),
        Kind::Sites => render(&pick(src.meshsites()?, q)?, q, false, now),
        Kind::Hubs => render(&pick(src.meshhubs()?, q)?, q, false, now),
    }
}

fn pick<K: Resource>(items: Vec<K>, q: &Query) -> Result<Vec<K>> {
    let Some(name) = &q.name else {
        return Ok(items);
    };
    let found: Vec<K> = items
        .into_iter()
        .filter(|o| o.meta().name.as_deref() == Some(name.as_str()))
        .collect();
    if found.is_empty() {
        bail!("{} {name:?} not found", q.kind.plural());
    }
    Ok(found)
}

/// Table columns of one kind.
pub trait Columns {
    /// Headers after NAMESPACE and NAME.
    fn header(wide: bool) -> Vec<&'static str>;
    /// Cells after NAMESPACE and NAME.
    fn cells(&self, wide: bool, now: Timestamp) -> Vec<String>;
}

fn render<K>(items: &[K], q: &Query, show_ns: bool, now: Timestamp) -> Result<String>
where
    K: Resource<DynamicType = ()> + Serialize + Columns,
{
    match q.format {
        Format::Json | Format::Yaml => {
            let mut objects = items
                .iter()
                .map(serde_json::to_value)
                .collect::<serde_json::Result<Vec<_>>>()?;
            if !q.show_managed_fields {
                for o in &mut objects {
                    if let Some(m) = o
                        .get_mut("metadata")
                        .and_then(serde_json::Value::as_object_mut)
                    {
                        m.remove("managedFields");
                    }
                }
            }
            let value = if q.name.is_some() && objects.len() == 1 {
                objects.remove(0)
            } else {
                serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects})
            };
            if q.format == Format::Json {
                Ok(format!("{}\n", serde_json::to_string_pretty(&value)?))
            } else {
                Ok(serde_saphyr::to_string(&value)?)
            }
        }
        Format::Table | Format::Wide => {
            let wide = q.format == Format::Wide;
            if items.is_empty() {
                return Ok(String::new());
            }
            let mut header = Vec::new();
            if show_ns {
                header.push("NAMESPACE");
            }
            header.push("NAME");
            header.extend(K::header(wide));
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|o| {
                    let mut row = Vec::new();
                    if show_ns {
                        row.push(o.meta().namespace.clone().unwrap_or_default());
                    }
                    row.push(o.meta().name.clone().unwrap_or_default());
                    row.extend(o.cells(wide, now));
                    row
                })
                .collect();
            Ok(table(&header, &rows))
        }
    }
}

fn created<K: Resource>(o: &K, now: Timestamp) -> String {
    o.meta()
        .creation_timestamp
        .as_ref()
        .map_or_else(|| "<unknown>".into(), |t| age(&t.0.to_string(), now))
}

fn cond(list: Option<&Vec<Condition>>, t: &str) -> [String; 3] {
    match list.and_then(|l| l.iter().find(|c| c.type_ == t)) {
        Some(c) => [c.status.clone(), c.reason.clone(), c.message.clone()],
        None => ["Unknown".into(), String::new(), String::new()],
    }
}

fn or_none(s: Option<&String>) -> String {
    s.cloned().unwrap_or_else(|| "<none>".into())
}

impl Columns for MeshApp {
    fn header(wide: bool) -> Vec<&'static str> {
        let mut h = vec!["READY", "NODES", "PEERS", "CIDR", "AGE"];
        if wide {
            h.extend(["SITES", "REASON", "MESSAGE"]);
        }
        h
    }
    fn cells(&self, wide: bool, now: Timestamp) -> Vec<String> {
        let st = self.status.as_ref();
        let [ready, reason, message] = cond(st.map(|s| &s.conditions), types::READY);
        let mut row = vec![
            ready,
            or_none(st.and_then(|s| s.nodes.as_ref())),
            or_none(st.and_then(|s| s.peers.as_ref())),
            or_none(st.and_then(|s| s.address_space.as_ref())),
            created(self, now),
        ];
        if wide {
            row.push(st.map(|s| s.sites.join(",")).unwrap_or_default());
            row.extend([reason, message]);
        }
        row
    }
}

impl Columns for MeshPolicy {
    fn header(wide: bool) -> Vec<&'static str> {
        let mut h = vec!["APP", "ACCEPTED", "AGE"];
        if wide {
            h.extend(["REASON", "MESSAGE"]);
        }
        h
    }
    fn cells(&self, wide: bool, now: Timestamp) -> Vec<String> {
        let [ok, reason, message] =
            cond(self.status.as_ref().map(|s| &s.conditions), types::ACCEPTED);
        let app = if self.spec.app.is_empty() {
            "<none>".to_string()
        } else {
            self.spec.app.clone()
        };
        let mut row = vec![app, ok, created(self, now)];
        if wide {
            row.extend([reason, message]);
        }
        row
    }
}

impl Columns for MeshNode {
    fn header(wide: bool) -> Vec<&'static str> {
        let mut h = vec!["SITE", "APPS", "DATAPLANE", "READY", "AGE"];
        if wide {
            h.extend([
                "ADDRESS",
                "GENERATION",
                "OBSERVED",
                "HEARTBEAT",
                "REASON",
                "MESSAGE",
            ]);
        }
        h
    }
    fn cells(&self, wide: bool, now: Timestamp) -> Vec<String> {
        let st = self.status.as_ref();
        let [ready, reason, message] = match st {
            Some(s) => cond(Some(&s.conditions), types::READY),
            None => ["Unknown".into(), String::new(), "no status reported".into()],
        };
        let mut row = vec![
            self.spec.site.clone(),
            format!(
                "{}/{}",
                st.map_or(0, |s| s.apps_ready),
                self.spec.apps.len()
            ),
            st.and_then(|s| s.dataplane)
                .map_or_else(|| "<unknown>".into(), |d| format!("{d:?}")),
            ready,
            created(self, now),
        ];
        if wide {
            row.extend([
                or_none(st.and_then(|s| s.endpoint_address.as_ref())),
                self.metadata
                    .generation
                    .map_or_else(String::new, |g| g.to_string()),
                st.and_then(|s| s.observed_generation)
                    .map_or_else(String::new, |g| g.to_string()),
                st.and_then(|s| s.heartbeat.as_deref())
                    .map_or_else(|| "<none>".into(), |h| format!("{} ago", age(h, now))),
                reason,
                message,
            ]);
        }
        row
    }
}

impl Columns for MeshSite {
    fn header(wide: bool) -> Vec<&'static str> {
        let mut h = vec!["KIND", "NODES", "READY", "AGE"];
        if wide {
            h.extend(["REASON", "MESSAGE"]);
        }
        h
    }
    fn cells(&self, wide: bool, now: Timestamp) -> Vec<String> {
        let st = self.status.as_ref();
        let [ready, reason, message] = cond(st.map(|s| &s.conditions), types::READY);
        let mut row = vec![
            format!("{:?}", self.spec.kind),
            st.map_or(0, |s| s.nodes).to_string(),
            ready,
            created(self, now),
        ];
        if wide {
            row.extend([reason, message]);
        }
        row
    }
}

impl Columns for MeshHub {
    fn header(wide: bool) -> Vec<&'static str> {
        let mut h = vec!["MEMBERS", "ACCEPTED", "AGE"];
        if wide {
            h.extend(["REASON", "MESSAGE"]);
        }
        h
    }
    fn cells(&self, wide: bool, now: Timestamp) -> Vec<String> {
        let st = self.status.as_ref();
        let [ok, reason, message] = cond(st.map(|s| &s.conditions), types::ACCEPTED);
        let mut row = vec![
            st.map_or(0, |s| s.members).to_string(),
            ok,
            created(self, now),
        ];
        if wide {
            row.extend([reason, message]);
        }
        row
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use weft_api::{MeshAppSpec, MeshAppStatus, MeshNodeSpec, MeshNodeStatus};

    struct Fixed {
        apps: Vec<MeshApp>,
        nodes: Vec<MeshNode>,
    }

    impl Source for Fixed {
        fn default_scope(&self) -> Scope {
            Scope::Namespace("default".into())
        }
        fn meshapps(&self, scope: &Scope) -> Result<Vec<MeshApp>> {
            Ok(self
                .apps
                .iter()
                .filter(|a| scope.contains(a.metadata.namespace.as_deref()))
                .cloned()
                .collect())
        }
        fn meshpolicies(&self, _: &Scope) -> Result<Vec<MeshPolicy>> {
            Ok(vec![])
        }
        fn meshnodes(&self) -> Result<Vec<MeshNode>> {
            Ok(self.nodes.clone())
        }
        fn meshsites(&self) -> Result<Vec<MeshSite>> {
            Ok(vec![])
        }
        fn meshhubs(&self) -> Result<Vec<MeshHub>> {
            Ok(vec![])
        }
    }

    fn now() -> Timestamp {
        "2025-01-01T01:00:00Z".parse().unwrap()
    }

    fn fixture() -> Fixed {
        let mut web = MeshApp::new("web", MeshAppSpec::default());
        web.metadata.namespace = Some("demo".into());
        web.metadata.creation_timestamp = Some(Time("2025-01-01T00:00:00Z".parse().unwrap()));
        web.status = Some(MeshAppStatus {
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: "AllPeersUp".into(),
                message: "ok".into(),
                last_transition_time: Time(now()),
                observed_generation: None,
            }],
            nodes: Some("2/2".into()),
            peers: Some("1/1".into()),
            address_space: Some("10.100.0.0/16".into()),
            ..Default::default()
        });
        let mut other = MeshApp::new("api", MeshAppSpec::default());
        other.metadata.namespace = Some("prod".into());
        let mut n1 = MeshNode::new(
            "n1",
            MeshNodeSpec {
                site: "local".into(),
                apps: vec![],
            },
        );
        n1.status = Some(MeshNodeStatus {
            heartbeat: Some("2025-01-01T00:59:50Z".into()),
            ..Default::default()
        });
        Fixed {
            apps: vec![web, other],
            nodes: vec![n1],
        }
    }

    fn q(kind: Kind, name: Option<&str>, scope: Scope, format: Format) -> Query {
        Query {
            kind,
            name: name.map(String::from),
            scope,
            format,
            show_managed_fields: false,
        }
    }

    #[test]
    fn app_table_has_kubectl_columns_and_namespace_only_across_namespaces() {
        let f = fixture();
        let one = run(
            &f,
            &q(
                Kind::Apps,
                None,
                Scope::Namespace("demo".into()),
                Format::Table,
            ),
            now(),
        )
        .unwrap();
        let lines: Vec<&str> = one.lines().collect();
        assert_eq!(lines.len(), 2, "{one}");
        assert!(lines[0].starts_with("NAME "), "{one}");
        for w in ["web", "True", "2/2", "1/1", "10.100.0.0/16", "60m"] {
            assert!(lines[1].contains(w), "{w} missing: {one}");
        }
        let all = run(&f, &q(Kind::Apps, None, Scope::All, Format::Wide), now()).unwrap();
        assert!(all.starts_with("NAMESPACE"), "{all}");
        assert!(all.contains("AllPeersUp") && all.contains("prod"), "{all}");
    }

    #[test]
    fn json_and_yaml_give_one_object_by_name_or_a_list() {
        let f = fixture();
        let list = run(&f, &q(Kind::Apps, None, Scope::All, Format::Json), now()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&list).unwrap();
        assert_eq!(v["kind"], "List");
        assert_eq!(v["items"].as_array().unwrap().len(), 2);
        let one = run(
            &f,
            &q(Kind::Apps, Some("web"), Scope::All, Format::Json),
            now(),
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&one).unwrap();
        assert_eq!(v["kind"], "MeshApp");
        assert_eq!(v["status"]["peers"], "1/1");
        let yaml = run(
            &f,
            &q(Kind::Apps, Some("web"), Scope::All, Format::Yaml),
            now(),
        )
        .unwrap();
        assert!(yaml.contains("kind: MeshApp"), "{yaml}");
        assert!(yaml.contains("name: web"), "{yaml}");
    }

    #[test]
    fn managed_fields_are_dropped_unless_asked_for() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
        let mut f = fixture();
        f.apps[0].metadata.managed_fields = Some(vec![ManagedFieldsEntry {
            manager: Some("kubectl-client-side-apply".into()),
            operation: Some("Update".into()),
            ..Default::default()
        }]);
        let mut query = q(
            Kind::Apps,
            Some("web"),
            Scope::Namespace("demo".into()),
            Format::Json,
        );
        let v: serde_json::Value = serde_json::from_str(&run(&f, &query, now()).unwrap()).unwrap();
        assert_eq!(v["metadata"]["name"], "web");
        assert!(v["metadata"].get("managedFields").is_none(), "{v}");
        query.format = Format::Yaml;
        let yaml = run(&f, &query, now()).unwrap();
        assert!(!yaml.contains("managedFields"), "{yaml}");
        query.show_managed_fields = true;
        let yaml = run(&f, &query, now()).unwrap();
        assert!(yaml.contains("managedFields"), "{yaml}");
        query.name = None;
        query.format = Format::Json;
        let v: serde_json::Value = serde_json::from_str(&run(&f, &query, now()).unwrap()).unwrap();
        assert!(v["items"][0]["metadata"].get("managedFields").is_some());
    }

    #[test]
    fn unknown_names_and_kinds_are_errors() {
        let f = fixture();
        let e = run(
            &f,
            &q(Kind::Nodes, Some("nope"), Scope::All, Format::Table),
            now(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("not found"), "{e}");
        assert!(Kind::parse("pods").is_err());
        assert_eq!(Kind::parse("mnode").unwrap(), Kind::Nodes);
    }

    #[test]
    fn node_wide_shows_heartbeat_age() {
        let f = fixture();
        let out = run(&f, &q(Kind::Nodes, None, Scope::All, Format::Wide), now()).unwrap();
        assert!(
            out.contains("HEARTBEAT") && out.contains("10s ago"),
            "{out}"
        );
        assert!(!out.starts_with("NAMESPACE"), "{out}");
    }
}
