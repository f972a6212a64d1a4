//! `graph [APP]`: the mesh as a picture. [`model`] builds the graph from
//! MeshNodes, [`layout`] places it, [`dot`] and [`svg`] draw it; with
//! `--layout graphviz` the DOT goes through Graphviz's `dot` instead.

pub mod dot;
pub mod layout;
pub mod model;
pub mod svg;

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// Renders DOT to SVG with Graphviz's `dot` (which must be on PATH).
pub fn graphviz_svg(dot_text: &str) -> Result<String> {
    let mut child = Command::new("dot")
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("run Graphviz `dot` (is it installed? the built-in layout needs nothing)")?;
    child
        .stdin
        .take()
        .context("dot stdin")?
        .write_all(dot_text.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "dot failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}
