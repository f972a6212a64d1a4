//! Puts Weft's CNI plugin into the node's CNI chain and takes it out again.
//!
//! Install appends `{"type": "weft-cni", "daemonSocket": ...}` as the last
//! plugin of every `*.conflist` in the configuration directory and copies
//! the plugin binary into the runtime's binary directory; uninstall removes
//! exactly that entry and the binary. Every conflist is read and checked
//! before any is written, each rewrite is atomic (temporary file + rename,
//! same permissions), and a conflist that already ends with the same entry
//! is not touched, so running install twice changes nothing.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

/// `type` of Weft's plugin in a conflist (and its binary's file name).
pub const PLUGIN_TYPE: &str = "weft-cni";

/// What install or uninstall changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Conflists rewritten.
    pub rewritten: Vec<PathBuf>,
    /// Conflists already as wanted.
    pub unchanged: Vec<PathBuf>,
    /// Binary copied or removed, if any.
    pub binary: Option<PathBuf>,
}

/// Weft's entry in a conflist.
pub fn entry(socket: &str) -> Value {
    json!({"type": PLUGIN_TYPE, "daemonSocket": socket})
}

fn is_ours(v: &Value) -> bool {
    v.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE)
}

/// Every `*.conflist` in `dir`, sorted, parsed and checked.
fn read_conflists(dir: &Path) -> Result<Vec<(PathBuf, Value)>> {
    let mut out = Vec::new();
    let rd = fs::read_dir(dir).with_context(|| format!("read CNI config dir {}", dir.display()))?;
    let mut paths: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().and_then(|x| x.to_str()) == Some("conflist") && p.is_file())
        .collect();
    paths.sort();
    for p in paths {
        let text = fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| anyhow!("{}: not a valid conflist (JSON): {e}", p.display()))?;
        let Some(plugins) = v.get("plugins").and_then(Value::as_array) else {
            bail!("{}: not a valid conflist: no \"plugins\" list", p.display());
        };
        if let Some(i) = plugins.iter().position(|x| !x.is_object()) {
            bail!(
                "{}: not a valid conflist: plugins[{i}] is not an object",
                p.display()
            );
        }
        out.push((p, v));
    }
    Ok(out)
}

/// Writes `bytes` to `path` atomically, keeping `mode`.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Not `*.conflist`: a runtime scanning the directory never sees it.
    let tmp = dir.join(format!(".{name}.weft-tmp"));
    let res = (|| -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("write {}", path.display()));
    }
    Ok(())
}

fn mode_of(p: &Path) -> u32 {
    fs::metadata(p)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o644)
}

fn rewrite(path: &Path, v: &Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(v).context("encode conflist")?;
    text.push('\n');
    write_atomic(path, text.as_bytes(), mode_of(path))
}

/// Adds Weft as the last plugin of every conflist in `conf_dir` and copies
/// `plugin` (the `weft-cni` binary) into `bin_dir`.
pub fn install(conf_dir: &Path, bin_dir: &Path, plugin: &Path, socket: &str) -> Result<Report> {
    let lists = read_conflists(conf_dir)?;
    if !plugin.is_file() {
        bail!("plugin binary {} does not exist", plugin.display());
    }
    let mut rep = Report::default();
    let want = entry(socket);
    // Decide everything first, then write.
    let mut changes = Vec::new();
    for (p, mut v) in lists {
        let plugins = v["plugins"].as_array_mut().expect("checked above");
        if plugins.last() == Some(&want) && plugins.iter().filter(|x| is_ours(x)).count() == 1 {
            rep.unchanged.push(p);
            continue;
        }
        plugins.retain(|x| !is_ours(x));
        plugins.push(want.clone());
        changes.push((p, v));
    }
    fs::create_dir_all(bin_dir).with_context(|| format!("create {}", bin_dir.display()))?;
    let bytes = fs::read(plugin).with_context(|| format!("read {}", plugin.display()))?;
    let dst = bin_dir.join(PLUGIN_TYPE);
    if fs::read(&dst).ok().as_deref() != Some(&bytes[..]) {
        // Rename over the old file: a running plugin keeps its inode.
        write_atomic(&dst, &bytes, 0o755)?;
    }
    rep.binary = Some(dst);
    for (p, v) in changes {
        rewrite(&p, &v)?;
        rep.rewritten.push(p);
    }
    Ok(rep)
}

/// Removes Weft's entries from every conflist in `conf_dir` and its binary
/// from `bin_dir`; everything else stays.
pub fn uninstall(conf_dir: &Path, bin_dir: &Path) -> Result<Report> {
    let lists = read_conflists(conf_dir)?;
    let mut rep = Report::default();
    let mut changes = Vec::new();
    for (p, mut v) in lists {
        let plugins = v["plugins"].as_array_mut().expect("checked above");
        let before = plugins.len();
        plugins.retain(|x| !is_ours(x));
        if plugins.len() == before {
            rep.unchanged.push(p);
        } else {
            changes.push((p, v));
        }
    }
    for (p, v) in changes {
        rewrite(&p, &v)?;
        rep.rewritten.push(p);
    }
    let dst = bin_dir.join(PLUGIN_TYPE);
    match fs::remove_file(&dst) {
        Ok(()) => rep.binary = Some(dst),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("remove {}", dst.display())),
    }
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BRIDGE: &str = r#"{
  "cniVersion": "1.0.0",
  "name": "pods",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24"}]],
              "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}"#;

    struct Dirs {
        _d: tempfile::TempDir,
        conf: PathBuf,
        bin: PathBuf,
        plugin: PathBuf,
    }

    fn dirs() -> Dirs {
        let d = tempfile::tempdir().unwrap();
        let conf = d.path().join("net.d");
        let bin = d.path().join("bin");
        fs::create_dir_all(&conf).unwrap();
        let plugin = d.path().join("weft-cni-build");
        fs::write(&plugin, b"#!/bin/sh\necho plugin\n").unwrap();
        fs::write(conf.join("10-pods.conflist"), BRIDGE).unwrap();
        fs::write(conf.join("README"), "not a conflist").unwrap();
        Dirs {
            _d: d,
            conf,
            bin,
            plugin,
        }
    }

    fn read(p: &Path) -> Value {
        serde_json::from_str(&fs::read_to_string(p).unwrap()).unwrap()
    }

    #[test]
    fn install_appends_last_is_idempotent_and_uninstall_restores() {
        let d = dirs();
        let list = d.conf.join("10-pods.conflist");
        let original = read(&list);
        let rep = install(&d.conf, &d.bin, &d.plugin, "/run/weft/attach.sock").unwrap();
        assert_eq!(rep.rewritten, vec![list.clone()]);
        let v = read(&list);
        let plugins = v["plugins"].as_array().unwrap();
        assert_eq!(plugins.len(), 3);
        assert_eq!(plugins[2], entry("/run/weft/attach.sock"));
        assert_eq!(plugins[..2], original["plugins"].as_array().unwrap()[..]);
        assert_eq!(v["name"], original["name"]);
        let bin = d.bin.join("weft-cni");
        assert_eq!(fs::read(&bin).unwrap(), fs::read(&d.plugin).unwrap());
        assert_eq!(mode_of(&bin) & 0o111, 0o111, "executable");

        // Again: nothing is rewritten (same bytes, same inode).
        let before = fs::read(&list).unwrap();
        let ino = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&list).unwrap());
        let rep = install(&d.conf, &d.bin, &d.plugin, "/run/weft/attach.sock").unwrap();
        assert!(rep.rewritten.is_empty(), "{rep:?}");
        assert_eq!(fs::read(&list).unwrap(), before);
        assert_eq!(
            std::os::unix::fs::MetadataExt::ino(&fs::metadata(&list).unwrap()),
            ino
        );

        // Another socket: still exactly one Weft entry, last.
        install(&d.conf, &d.bin, &d.plugin, "/run/other.sock").unwrap();
        let v = read(&list);
        let plugins = v["plugins"].as_array().unwrap();
        assert_eq!(plugins.iter().filter(|p| is_ours(p)).count(), 1);
        assert_eq!(plugins.last().unwrap(), &entry("/run/other.sock"));

        let rep = uninstall(&d.conf, &d.bin).unwrap();
        assert_eq!(rep.rewritten, vec![list.clone()]);
        assert_eq!(read(&list), original, "uninstall restores the conflist");
        assert!(!bin.exists());
        assert_eq!(
            fs::read_to_string(d.conf.join("README")).unwrap(),
            "not a conflist"
        );
        let leftovers: Vec<_> = fs::read_dir(&d.conf)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(leftovers.len(), 2, "no temporary files: {leftovers:?}");

        // Uninstall again: nothing to do, still fine.
        let rep = uninstall(&d.conf, &d.bin).unwrap();
        assert!(rep.rewritten.is_empty() && rep.binary.is_none());
    }

    #[test]
    fn a_malformed_conflist_is_named_and_nothing_is_rewritten() {
        let d = dirs();
        let good = d.conf.join("10-pods.conflist");
        let before = fs::read(&good).unwrap();
        for (name, text, want) in [
            (
                "20-broken.conflist",
                "{\"plugins\": [",
                "not a valid conflist (JSON)",
            ),
            (
                "20-broken.conflist",
                "{\"name\": \"x\"}",
                "no \"plugins\" list",
            ),
            (
                "20-broken.conflist",
                "{\"plugins\": [\"bridge\"]}",
                "plugins[0] is not an object",
            ),
        ] {
            let bad = d.conf.join(name);
            fs::write(&bad, text).unwrap();
            let e = format!(
                "{:#}",
                install(&d.conf, &d.bin, &d.plugin, "/run/weft/attach.sock").unwrap_err()
            );
            assert!(e.contains("20-broken.conflist") && e.contains(want), "{e}");
            assert_eq!(fs::read(&good).unwrap(), before, "nothing rewritten");
            assert_eq!(fs::read_to_string(&bad).unwrap(), text);
            assert!(!d.bin.join("weft-cni").exists(), "no binary copied");
            let e = format!("{:#}", uninstall(&d.conf, &d.bin).unwrap_err());
            assert!(e.contains("20-broken.conflist"), "{e}");
        }
    }

    #[test]
    fn a_missing_plugin_binary_is_an_error_before_any_write() {
        let d = dirs();
        let before = fs::read(d.conf.join("10-pods.conflist")).unwrap();
        let e = install(&d.conf, &d.bin, &d.conf.join("nope"), "/s").unwrap_err();
        assert!(format!("{e:#}").contains("nope"), "{e:#}");
        assert_eq!(fs::read(d.conf.join("10-pods.conflist")).unwrap(), before);
    }
}
