//! Where the control plane's programs come from: `WEFT_KUBE_APISERVER` and
//! `WEFT_ETCD` when set (so the suite runs unchanged against any newer
//! Kubernetes), else the kube-apiserver that `scripts/control-plane.sh` built
//! from Debian's source package and cached, and Debian's etcd.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Cache directory of `scripts/control-plane.sh` (`$WEFT_CACHE`).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("WEFT_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/weft"))
}

/// The Kubernetes version the setup script builds when no binary is given.
pub const DEBIAN_KUBERNETES: &str = "1.20.2";

/// The programs a control plane needs.
#[derive(Clone, Debug)]
pub struct Binaries {
    /// kube-apiserver.
    pub apiserver: PathBuf,
    /// etcd.
    pub etcd: PathBuf,
    /// kubectl.
    pub kubectl: PathBuf,
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    })
}

fn executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

impl Binaries {
    /// Finds the programs, or says which are missing and how to get them.
    pub fn find() -> Result<Binaries> {
        let mut missing = Vec::new();
        let apiserver = match std::env::var_os("WEFT_KUBE_APISERVER") {
            Some(p) => PathBuf::from(p),
            None => cache_dir()
                .join(format!("kubernetes-{DEBIAN_KUBERNETES}"))
                .join("kube-apiserver"),
        };
        if !executable(&apiserver) {
            missing.push(format!("kube-apiserver ({})", apiserver.display()));
        }
        let etcd = match std::env::var_os("WEFT_ETCD") {
            Some(p) => Some(PathBuf::from(p)),
            None => on_path("etcd"),
        };
        if !etcd.as_deref().is_some_and(executable) {
            missing.push(format!(
                "etcd ({})",
                etcd.as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "not on PATH".into())
            ));
        }
        let kubectl = on_path("kubectl");
        match &kubectl {
            None => missing.push("kubectl (not on PATH)".into()),
            Some(k) => match kubectl_client_version(k) {
                Some(v) if v >= (1, 21) => {}
                v => missing.push(format!(
                    "kubectl >= 1.21 ({} is {}; the kustomize of older ones cannot read \
                     directories in `resources`, so `kubectl apply -k config/default` fails)",
                    k.display(),
                    v.map(|(a, b)| format!("{a}.{b}"))
                        .unwrap_or_else(|| "of unknown version".into())
                )),
            },
        }
        if !missing.is_empty() {
            bail!(
                "{} (run `bash scripts/control-plane.sh`, or set WEFT_KUBE_APISERVER / WEFT_ETCD)",
                missing.join(", ")
            );
        }
        Ok(Binaries {
            apiserver,
            etcd: etcd.unwrap_or_default(),
            kubectl: kubectl.unwrap_or_default(),
        })
    }

    /// `(major, minor)` of the kube-apiserver binary (`--version`).
    pub fn apiserver_version(&self) -> Result<(u32, u32)> {
        let out = Command::new(&self.apiserver)
            .arg("--version")
            .output()
            .with_context(|| format!("run {} --version", self.apiserver.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        parse_version(&text).with_context(|| format!("no version in {text:?}"))
    }
}

/// `(major, minor)` of a kubectl binary's client.
fn kubectl_client_version(kubectl: &Path) -> Option<(u32, u32)> {
    let out = Command::new(kubectl)
        .args(["version", "--client", "-o", "json"])
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    parse_version(v["clientVersion"]["gitVersion"].as_str()?)
}

/// `(major, minor)` from text like `Kubernetes v1.20.2` or `v1.36.0-alpha.1`.
pub fn parse_version(text: &str) -> Option<(u32, u32)> {
    let v = text.split_whitespace().find_map(|w| w.strip_prefix('v'))?;
    let mut it = v.split(['.', '-', '+']);
    let major = it.next()?.parse().ok()?;
    let minor = it
        .next()?
        .trim_end_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::parse_version;

    #[test]
    fn versions_parse() {
        assert_eq!(parse_version("Kubernetes v1.20.2\n"), Some((1, 20)));
        assert_eq!(parse_version("Kubernetes v1.36.0-alpha.1"), Some((1, 36)));
        assert_eq!(parse_version("Kubernetes v1.30.1+k3s1"), Some((1, 30)));
        assert_eq!(parse_version("no version here"), None);
    }
}
