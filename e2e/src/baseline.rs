//! Reference paths for the benchmark: a raw veth pair between two namespaces,
//! and a userspace WireGuard between two namespaces, either Debian's
//! `wireguard-go` or boringtun 0.7 as Weft drove it before GotaTun
//! (`weft-boringtun-baseline`).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use std::io::Write;

use crate::cleanup::WG_SOCKET_DIR;
use crate::netns::{exec_in, NetNs};
use crate::procs::Proc;
use crate::traffic::which;

/// Two namespaces joined by a veth pair, `10.201.0.1/24` and `10.201.0.2/24`.
#[derive(Debug)]
pub struct VethPair {
    /// Side A (`<prefix>-va`).
    pub a: NetNs,
    /// Side B (`<prefix>-vb`).
    pub b: NetNs,
}

impl VethPair {
    /// Address of side A.
    pub const ADDR_A: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 1);
    /// Address of side B.
    pub const ADDR_B: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 2);

    /// Creates the pair.
    pub fn new(prefix: &str) -> Result<VethPair> {
        let a = NetNs::create(&format!("{prefix}-va"))?;
        let b = NetNs::create(&format!("{prefix}-vb"))?;
        link_pair(&a, &b, "veth0", Self::ADDR_A, Self::ADDR_B, 1500)?;
        Ok(VethPair { a, b })
    }
}

fn link_pair(
    a: &NetNs,
    b: &NetNs,
    name: &str,
    addr_a: Ipv4Addr,
    addr_b: Ipv4Addr,
    mtu: u32,
) -> Result<()> {
    a.ip(&[
        "link",
        "add",
        name,
        "mtu",
        &mtu.to_string(),
        "type",
        "veth",
        "peer",
        "name",
        name,
        "netns",
        b.name(),
    ])?;
    a.ip(&["addr", "add", &format!("{addr_a}/24"), "dev", name])?;
    b.ip(&["addr", "add", &format!("{addr_b}/24"), "dev", name])?;
    a.ip(&["link", "set", name, "up"])?;
    b.ip(&["link", "set", name, "up"])?;
    Ok(())
}

static WG_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Which userspace WireGuard a [`UserspacePair`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Userspace {
    /// Debian's `wireguard-go`.
    WireguardGo,
    /// boringtun 0.7 configured as the daemon used it before GotaTun
    /// (`weft-boringtun-baseline`, found like Weft's own binaries).
    Boringtun07,
}

impl Userspace {
    /// The row name in the benchmark.
    pub fn label(self) -> &'static str {
        match self {
            Userspace::WireguardGo => "wireguard-go",
            Userspace::Boringtun07 => "boringtun 0.7 (Weft before)",
        }
    }

    /// The program to run, or what is missing.
    fn program(self) -> Result<PathBuf> {
        match self {
            Userspace::WireguardGo => {
                which("wireguard-go").context("wireguard-go is not installed")
            }
            Userspace::Boringtun07 => crate::procs::bin("weft-boringtun-baseline"),
        }
    }

    /// What is missing to build a pair of this kind (`wg` and the program).
    pub fn missing(self) -> Option<String> {
        if which("wg").is_none() {
            return Some("wg is not installed".into());
        }
        self.program().err().map(|e| format!("{e:#}"))
    }
}

/// Two namespaces with a veth underlay (10.202.0.0/24) and a userspace
/// WireGuard tunnel between them (10.203.0.1 <-> 10.203.0.2). Interface names
/// are unique on the host (`wg<pid><k>a/b`) because /var/run/wireguard is
/// shared by all namespaces.
#[derive(Debug)]
pub struct UserspacePair {
    // Processes stop before the namespaces go.
    procs: Vec<Proc>,
    ifnames: [String; 2],
    /// Side A.
    pub a: NetNs,
    /// Side B.
    pub b: NetNs,
}

impl UserspacePair {
    /// Tunnel address of side A.
    pub const ADDR_A: Ipv4Addr = Ipv4Addr::new(10, 203, 0, 1);
    /// Tunnel address of side B.
    pub const ADDR_B: Ipv4Addr = Ipv4Addr::new(10, 203, 0, 2);

    /// Builds the pair; logs and keys go to `dir`.
    pub fn new(kind: Userspace, prefix: &str, dir: &Path) -> Result<UserspacePair> {
        if let Some(m) = kind.missing() {
            bail!("{m}");
        }
        let program = kind.program()?;
        let tag = match kind {
            Userspace::WireguardGo => "g",
            Userspace::Boringtun07 => "b",
        };
        let k = WG_COUNTER.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let ifnames = [format!("wg{pid}{k}a"), format!("wg{pid}{k}b")];
        let a = NetNs::create(&format!("{prefix}-{tag}a"))?;
        let b = NetNs::create(&format!("{prefix}-{tag}b"))?;
        let mut pair = UserspacePair {
            procs: Vec::new(),
            ifnames: ifnames.clone(),
            a,
            b,
        };
        link_pair(
            &pair.a,
            &pair.b,
            "u0",
            Ipv4Addr::new(10, 202, 0, 1),
            Ipv4Addr::new(10, 202, 0, 2),
            1500,
        )?;
        for (ns, ifname) in [
            (pair.a.name().to_string(), &ifnames[0]),
            (pair.b.name().to_string(), &ifnames[1]),
        ] {
            let sock = socket_path(ifname);
            if sock.exists() {
                bail!("{} already exists", sock.display());
            }
            let args: Vec<String> = match kind {
                Userspace::WireguardGo => vec!["-f".into(), ifname.clone()],
                Userspace::Boringtun07 => vec![ifname.clone()],
            };
            let p = Proc::spawn(
                &format!("{} {ifname}", kind.label()),
                &program,
                &args,
                &[(
                    "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD".into(),
                    "1".into(),
                )],
                Some(&ns),
                &dir.join(format!("{tag}-{ifname}.log")),
            )?;
            pair.procs.push(p);
            crate::wait_for(
                &format!("{} to appear", sock.display()),
                Duration::from_secs(5),
                Duration::from_millis(20),
                || Ok(sock.exists().then_some(())),
            )?;
        }
        let keys = [genkey()?, genkey()?];
        let pubs = [pubkey(&keys[0])?, pubkey(&keys[1])?];
        let nss = [pair.a.name().to_string(), pair.b.name().to_string()];
        let addrs = [Self::ADDR_A, Self::ADDR_B];
        for i in 0..2 {
            let j = 1 - i;
            let keyfile = dir.join(format!("wg-{}.key", ifnames[i]));
            write_private(&keyfile, &keys[i])?;
            let out = exec_in(
                &nss[i],
                "wg",
                &[
                    "set",
                    &ifnames[i],
                    "listen-port",
                    "51820",
                    "private-key",
                    keyfile.to_str().context("path")?,
                    "peer",
                    &pubs[j],
                    "endpoint",
                    &format!("10.202.0.{}:51820", j + 1),
                    "allowed-ips",
                    &format!("{}/32", addrs[j]),
                ],
            )?;
            if !out.status.success() {
                bail!(
                    "wg set {}: {}",
                    ifnames[i],
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let ns = if i == 0 { &pair.a } else { &pair.b };
            ns.ip(&[
                "addr",
                "add",
                &format!("{}/24", addrs[i]),
                "dev",
                &ifnames[i],
            ])?;
            ns.ip(&["link", "set", &ifnames[i], "mtu", "1420", "up"])?;
        }
        Ok(pair)
    }

    /// The two interface names.
    pub fn ifnames(&self) -> &[String; 2] {
        &self.ifnames
    }

    /// Process ids of the two WireGuard processes (for CPU accounting).
    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(|p| p.pid()).collect()
    }
}

fn socket_path(ifname: &str) -> PathBuf {
    PathBuf::from(WG_SOCKET_DIR).join(format!("{ifname}.sock"))
}

fn genkey() -> Result<String> {
    let out = Command::new("wg")
        .arg("genkey")
        .output()
        .context("wg genkey")?;
    if !out.status.success() {
        bail!("wg genkey failed");
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn pubkey(private: &str) -> Result<String> {
    let mut child = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("wg pubkey")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(format!("{private}\n").as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("wg pubkey failed");
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn write_private(path: &Path, key: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(key.as_bytes())?;
    Ok(())
}

impl Drop for UserspacePair {
    fn drop(&mut self) {
        for p in &mut self.procs {
            p.stop(Duration::from_secs(3));
        }
        for ifname in &self.ifnames {
            let _ = std::fs::remove_file(socket_path(ifname));
        }
    }
}
