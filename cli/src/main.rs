//! `kubectl-weft`: `kubectl weft get|graph|completion`, against the cluster
//! of the current kubeconfig context, or with `--state DIR` against a
//! standalone mesh's state directory.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use k8s_openapi::jiff::Timestamp;
use weft_cli::get::{self, Format, Kind, Query};
use weft_cli::graph::{self, dot, model, svg};
use weft_cli::source::{parse_timeout, KubeOptions, KubeSource, Scope, Source, StateSource};

const EXAMPLES: &str = "\
Examples:
  # Apps of the current namespace (kubeconfig context), as kubectl would show them
  kubectl weft get meshapps
  # Every namespace, with reasons and sites
  kubectl weft get meshapps -A -o wide
  # One node as YAML, from another context
  kubectl weft get meshnode node-1 -o yaml --context staging
  # A standalone mesh (no Kubernetes): read its state directory
  kubectl-weft get meshnodes --state /var/lib/weft-state
  # The whole mesh as a picture (built-in layout, no Graphviz needed)
  kubectl weft graph -o svg > mesh.svg
  # One app's links as DOT, or laid out by Graphviz when installed
  kubectl weft graph demo/web -o dot
  kubectl weft graph web -n demo -o svg --layout graphviz > web.svg
  # Shell completion
  kubectl-weft completion bash > /etc/bash_completion.d/kubectl-weft";

const GET_EXAMPLES: &str = "\
Kinds: meshapps (mapp), meshnodes (mnode), meshpolicies (mpol), meshsites (msite),
meshhubs (mhub); with --state also manifests (the standalone operator's view of
its manifest files).

Examples:
  kubectl weft get meshapps -n demo
  kubectl weft get mapp web -n demo -o json
  kubectl weft get meshnodes -o wide
  kubectl-weft get meshapps --state /var/lib/weft-state";

const GRAPH_EXAMPLES: &str = "\
Sites are columns (DOT: clusters), nodes are boxes listing their apps
(`(transit)`: placed without workloads to carry cross-app flows; `⇄ APP`:
an app link on that node), and every peer link of an app is an edge coloured
by its last handshake: green < 180 s, amber older, red none. Lost nodes (no
heartbeat for 30 s) are dashed and grey.

Examples:
  kubectl weft graph -o svg > mesh.svg
  kubectl weft graph demo/db -o dot | dot -Tpng > db.png
  kubectl-weft graph --state /var/lib/weft-state -o svg > mesh.svg";

/// Weft's command line: get Weft objects and draw the mesh.
#[derive(Parser)]
#[command(name = "kubectl-weft", version, after_help = EXAMPLES)]
struct Cli {
    /// Read a standalone mesh's state directory instead of a cluster.
    #[arg(long, global = true, value_name = "DIR")]
    state: Option<PathBuf>,
    /// Path to the kubeconfig file (default: $KUBECONFIG or ~/.kube/config).
    #[arg(long, global = true, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: the current context).
    #[arg(long, global = true)]
    context: Option<String>,
    /// How long one request to the API server may take, connecting
    /// included (10s, 500ms, 2m; 0: no limit). Default: 30 s to connect.
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_timeout)]
    request_timeout: Option<Duration>,
    /// Namespace of namespaced kinds (default: the context's namespace;
    /// with --state: every namespace).
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    /// List namespaced kinds across every namespace.
    #[arg(short = 'A', long, global = true, conflicts_with = "namespace")]
    all_namespaces: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Display Weft objects, like kubectl get.
    #[command(after_help = GET_EXAMPLES)]
    Get {
        /// meshapps, meshnodes, meshpolicies, meshsites, meshhubs (or manifests with --state).
        kind: String,
        /// Only this object.
        name: Option<String>,
        /// Output format (default: a table).
        #[arg(short = 'o', long, value_enum)]
        output: Option<GetOutput>,
        /// Keep metadata.managedFields in JSON and YAML output.
        #[arg(long)]
        show_managed_fields: bool,
    },
    /// Draw the mesh: sites, nodes, apps and peer links by handshake age.
    #[command(after_help = GRAPH_EXAMPLES)]
    Graph {
        /// Only this app (`namespace/name`, or `name`).
        app: Option<String>,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "dot")]
        output: GraphOutput,
        /// SVG layout: the built-in one, or Graphviz's `dot` (must be on PATH).
        #[arg(long, value_enum, default_value = "builtin")]
        layout: GraphLayout,
    },
    /// Print a shell completion script.
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum GetOutput {
    Wide,
    Json,
    Yaml,
}

#[derive(Clone, Copy, ValueEnum)]
enum GraphOutput {
    Dot,
    Svg,
}

#[derive(Clone, Copy, ValueEnum)]
enum GraphLayout {
    Builtin,
    Graphviz,
}

fn source(cli: &Cli) -> Result<Box<dyn Source>> {
    Ok(match &cli.state {
        Some(dir) => Box::new(StateSource::new(dir)?),
        None => Box::new(KubeSource::connect(&KubeOptions {
            kubeconfig: cli.kubeconfig.clone(),
            context: cli.context.clone(),
            request_timeout: cli.request_timeout,
        })?),
    })
}

fn scope(cli: &Cli, src: &dyn Source) -> Scope {
    if cli.all_namespaces {
        Scope::All
    } else if let Some(ns) = &cli.namespace {
        Scope::Namespace(ns.clone())
    } else {
        src.default_scope()
    }
}

fn run(cli: &Cli) -> Result<String> {
    let now = Timestamp::now();
    match &cli.command {
        Cmd::Completion { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "kubectl-weft", &mut out);
            Ok(String::from_utf8(out)?)
        }
        Cmd::Get {
            kind,
            name,
            output,
            show_managed_fields,
        } => {
            if let (Some(dir), "manifests" | "manifest") = (&cli.state, kind.as_str()) {
                use weft_operator::standalone::get::{render, Output};
                let out = match output {
                    None => Output::Table,
                    Some(GetOutput::Wide) => Output::Wide,
                    Some(GetOutput::Json | GetOutput::Yaml) => Output::Json,
                };
                let text = render("manifests", dir, out, now)?;
                return Ok(if matches!(output, Some(GetOutput::Yaml)) {
                    let v: serde_json::Value = serde_json::from_str(&text)?;
                    serde_saphyr::to_string(&v)?
                } else {
                    text
                });
            }
            let kind = Kind::parse(kind)?;
            let src = source(cli)?;
            let q = Query {
                kind,
                name: name.clone(),
                scope: scope(cli, src.as_ref()),
                format: match output {
                    None => Format::Table,
                    Some(GetOutput::Wide) => Format::Wide,
                    Some(GetOutput::Json) => Format::Json,
                    Some(GetOutput::Yaml) => Format::Yaml,
                },
                show_managed_fields: *show_managed_fields,
            };
            let text = get::run(src.as_ref(), &q, now)?;
            if text.is_empty() && matches!(q.format, Format::Table | Format::Wide) {
                eprintln!("No resources found.");
            }
            Ok(text)
        }
        Cmd::Graph {
            app,
            output,
            layout,
        } => {
            let src = source(cli)?;
            // `graph web -n demo` means demo/web.
            let app = match (app, &cli.namespace) {
                (Some(a), Some(ns)) if !a.contains('/') => Some(format!("{ns}/{a}")),
                (a, _) => a.clone(),
            };
            let g = model::build(&src.meshnodes()?, app.as_deref(), now);
            if g.nodes.is_empty() {
                match &app {
                    Some(a) => eprintln!("No node runs app {a}."),
                    None => eprintln!("No MeshNodes found."),
                }
            }
            Ok(match (output, layout) {
                (GraphOutput::Dot, _) => dot::render(&g),
                (GraphOutput::Svg, GraphLayout::Builtin) => svg::render(&g),
                (GraphOutput::Svg, GraphLayout::Graphviz) => graph::graphviz_svg(&dot::render(&g))?,
            })
        }
    }
}

fn main() {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(text) => {
            let mut out = std::io::stdout().lock();
            // A closed pipe (`| head`) is not an error worth a message.
            let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
        }
        Err(e) => {
            eprintln!("error: {}", weft_cli::error_message(&e));
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_valid_and_help_has_examples() {
        Cli::command().debug_assert();
        let help = Cli::command().render_long_help().to_string();
        assert!(
            help.contains("Examples:") && help.contains("kubectl weft graph"),
            "{help}"
        );
    }

    #[test]
    fn global_flags_go_anywhere_like_kubectl() {
        let cli = Cli::try_parse_from([
            "kubectl-weft",
            "get",
            "meshapps",
            "-n",
            "demo",
            "-o",
            "yaml",
            "--context",
            "c1",
        ])
        .unwrap();
        assert_eq!(cli.namespace.as_deref(), Some("demo"));
        assert_eq!(cli.context.as_deref(), Some("c1"));
        assert!(Cli::try_parse_from(["kubectl-weft", "get", "mapp", "-A", "-n", "x"]).is_err());
    }

    #[test]
    fn completion_scripts_are_generated() {
        for shell in ["bash", "zsh", "fish"] {
            let cli = Cli::try_parse_from(["kubectl-weft", "completion", shell]).unwrap();
            let s = run(&cli).unwrap();
            assert!(s.contains("kubectl-weft") && s.contains("graph"), "{shell}");
        }
    }
}
