//! A real Kubernetes control plane for the tests: etcd and kube-apiserver,
//! started on the spot inside a network namespace of the test's own (attached
//! to the simulated WAN, so the simulated nodes reach it as a cluster's nodes
//! reach theirs), with certificates and a service-account signing key made
//! for the run, RBAC and Node authorisers and the default admission plugins
//! plus NodeRestriction.
//!
//! Everything runs in that namespace, so its ports are free by construction
//! and parallel tests never meet. `kubectl` runs there too, as the admin
//! (`system:masters`) or as a ServiceAccount through a token from the
//! TokenRequest API bound to a Pod object, exactly what a pod gets.
//! Dropping the [`ControlPlane`] stops the API server, then etcd.

pub mod binaries;
pub mod pki;

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::procs::Proc;
use binaries::Binaries;
use pki::Pki;

/// The API server's port (inside the control plane's own namespace).
pub const APISERVER_PORT: u16 = 6443;
const ETCD_CLIENT: &str = "http://127.0.0.1:2379";
const ETCD_PEER: &str = "http://127.0.0.1:2380";
/// The service-account token issuer (also the default audience).
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// A running etcd + kube-apiserver.
pub struct ControlPlane {
    // Field order: the API server stops before etcd.
    apiserver: Option<Proc>,
    etcd: Option<Proc>,
    netns: String,
    address: Ipv4Addr,
    dir: PathBuf,
    bins: Binaries,
    pki: Pki,
    version: (u32, u32),
    admin_kubeconfig: PathBuf,
}

fn b64_file(path: &Path) -> Result<String> {
    use base64::Engine;
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// A kubeconfig for `server` trusting `ca`, with one user entry; everything
/// embedded, as kubeconfigs handed to people are.
fn kubeconfig(server: &str, ca: &Path, user: Value) -> Result<Value> {
    Ok(json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "weft-e2e", "cluster": {
            "server": server,
            "certificate-authority-data": b64_file(ca)?,
        }}],
        "users": [{"name": "user", "user": user}],
        "contexts": [{"name": "weft-e2e", "context": {"cluster": "weft-e2e", "user": "user"}}],
        "current-context": "weft-e2e",
    }))
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver in `netns` (which must exist), serving
    /// on `address:6443`, with state and logs under `dir`; waits for `/readyz`.
    pub fn start(netns: &str, address: Ipv4Addr, dir: &Path) -> Result<ControlPlane> {
        let bins = Binaries::find()?;
        let version = bins.apiserver_version()?;
        std::fs::create_dir_all(dir.join("logs"))?;
        let pki = Pki::create(
            &dir.join("pki"),
            &[
                IpAddr::V4(address),
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                // The first address of the service range: the `kubernetes` Service.
                IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1)),
            ],
            &[
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
        )?;
        let admin_kubeconfig = dir.join("admin.kubeconfig");
        write_private(
            &admin_kubeconfig,
            &kubeconfig(
                &format!("https://127.0.0.1:{APISERVER_PORT}"),
                &pki.ca_cert,
                json!({
                    "client-certificate-data": b64_file(&pki.admin_cert)?,
                    "client-key-data": b64_file(&pki.admin_key)?,
                }),
            )?
            .to_string(),
        )?;
        let mut cp = ControlPlane {
            apiserver: None,
            etcd: None,
            netns: netns.to_string(),
            address,
            dir: dir.to_path_buf(),
            bins,
            pki,
            version,
            admin_kubeconfig,
        };
        cp.start_etcd()?;
        cp.start_apiserver()?;
        Ok(cp)
    }

    fn start_etcd(&mut self) -> Result<()> {
        let data = self.dir.join("etcd");
        std::fs::create_dir_all(&data)?;
        let args: Vec<String> = [
            "--name=weft-e2e".to_string(),
            format!("--data-dir={}", data.display()),
            format!("--listen-client-urls={ETCD_CLIENT}"),
            format!("--advertise-client-urls={ETCD_CLIENT}"),
            format!("--listen-peer-urls={ETCD_PEER}"),
            format!("--initial-advertise-peer-urls={ETCD_PEER}"),
            format!("--initial-cluster=weft-e2e={ETCD_PEER}"),
            "--log-level=warn".into(),
        ]
        .into();
        let p = Proc::spawn(
            "etcd",
            &self.bins.etcd,
            &args,
            &[],
            Some(&self.netns),
            &self.dir.join("logs/etcd.log"),
        )?;
        self.etcd = Some(p);
        let etcd = self.bins.etcd.clone();
        crate::wait_for(
            "etcd to serve",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || {
                // etcd answers /health on its client URL once it has a leader.
                let out = crate::netns::exec_in(
                    &self.netns,
                    "bash",
                    &[
                        "-c",
                        "exec 3<>/dev/tcp/127.0.0.1/2379 && printf 'GET /health HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3",
                    ],
                )?;
                let text = String::from_utf8_lossy(&out.stdout);
                Ok(text.contains("\"health\":\"true\"").then_some(()))
            },
        )
        .with_context(|| format!("{} did not become healthy", etcd.display()))
    }

    fn apiserver_args(&self) -> Vec<String> {
        let p = &self.pki;
        let mut a = vec![
            format!("--etcd-servers={ETCD_CLIENT}"),
            "--bind-address=0.0.0.0".into(),
            format!("--secure-port={APISERVER_PORT}"),
            format!("--advertise-address={}", self.address),
            format!("--cert-dir={}", self.dir.join("pki").display()),
            format!("--tls-cert-file={}", p.server_cert.display()),
            format!("--tls-private-key-file={}", p.server_key.display()),
            format!("--client-ca-file={}", p.ca_cert.display()),
            format!("--service-account-key-file={}", p.sa_pub.display()),
            format!("--service-account-signing-key-file={}", p.sa_key.display()),
            format!("--service-account-issuer={ISSUER}"),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            "--authorization-mode=Node,RBAC".into(),
            "--enable-admission-plugins=NodeRestriction".into(),
            "--allow-privileged=true".into(),
            "--profiling=false".into(),
        ];
        if self.version < (1, 24) {
            // Before 1.24 the server also listens without TLS or authentication
            // on 127.0.0.1:8080 unless told not to.
            a.push("--insecure-port=0".into());
        }
        a
    }

    /// Starts the API server (again, after [`ControlPlane::stop_apiserver`])
    /// and waits until it is ready.
    pub fn start_apiserver(&mut self) -> Result<()> {
        if self.apiserver.is_none() {
            let p = Proc::spawn(
                "kube-apiserver",
                &self.bins.apiserver,
                &self.apiserver_args(),
                &[],
                Some(&self.netns),
                &self.dir.join("logs/kube-apiserver.log"),
            )?;
            self.apiserver = Some(p);
        } else if let Some(p) = self.apiserver.as_mut() {
            if !p.is_running() {
                p.restart()?;
            }
        }
        self.wait_ready(Duration::from_secs(120))
    }

    /// Stops the API server (SIGTERM); etcd keeps the state.
    pub fn stop_apiserver(&mut self) {
        if let Some(p) = self.apiserver.as_mut() {
            p.stop(Duration::from_secs(20));
        }
    }

    /// Waits until `/readyz` answers ok (every post-start hook done, RBAC
    /// bootstrap roles included).
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let start = std::time::Instant::now();
        loop {
            crate::check_interrupt()?;
            if let Some(p) = self.apiserver.as_mut() {
                if !p.is_running() {
                    bail!("kube-apiserver exited:\n{}", p.log_tail(30));
                }
            }
            let out = self.kubectl_output(&["get", "--raw", "/readyz"], None)?;
            if out.status.success() {
                return Ok(());
            }
            if start.elapsed() > timeout {
                let tail = self
                    .apiserver
                    .as_ref()
                    .map(|p| p.log_tail(30))
                    .unwrap_or_default();
                bail!(
                    "kube-apiserver not ready after {timeout:?} ({}); log:\n{tail}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// `(major, minor)` of the running API server.
    pub fn version(&self) -> (u32, u32) {
        self.version
    }

    /// Version as text (`1.20`).
    pub fn version_text(&self) -> String {
        format!("{}.{}", self.version.0, self.version.1)
    }

    /// The namespace the control plane (and `kubectl`) runs in.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// URL of the API server as the simulated nodes dial it.
    pub fn server_url(&self) -> String {
        format!("https://{}:{APISERVER_PORT}", self.address)
    }

    /// The admin kubeconfig (dials 127.0.0.1, so only from the control plane's namespace).
    pub fn admin_kubeconfig(&self) -> &Path {
        &self.admin_kubeconfig
    }

    /// The run directory (logs, pki, etcd data).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The API server's log file.
    pub fn apiserver_log(&self) -> PathBuf {
        self.dir.join("logs/kube-apiserver.log")
    }

    /// `kubectl ARGS` with `kubeconfig`, in the control plane's namespace,
    /// with `stdin` piped in when given. Returns the whole output.
    pub fn kubectl_with(
        &self,
        kubeconfig: &Path,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<Output> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns])
            .arg(&self.bins.kubectl)
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("run kubectl {}", args.join(" ")))?;
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .context("kubectl stdin")?
                .write_all(text.as_bytes())?;
        }
        Ok(child.wait_with_output()?)
    }

    /// `kubectl ARGS` as the admin; the whole output.
    pub fn kubectl_output(&self, args: &[&str], stdin: Option<&str>) -> Result<Output> {
        self.kubectl_with(&self.admin_kubeconfig, args, stdin)
    }

    /// `kubectl ARGS` as the admin: stdout, or an error carrying stderr.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        checked(args, self.kubectl_output(args, None)?)
    }

    /// `kubectl ARGS` as the admin with `stdin`: stdout, or an error with stderr.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Result<String> {
        checked(args, self.kubectl_output(args, Some(stdin))?)
    }

    /// `kubectl get ARGS -o json`, parsed.
    pub fn get_json(&self, args: &[&str]) -> Result<Value> {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        Ok(serde_json::from_str(&self.kubectl(&all)?)?)
    }

    /// URL of the API server from inside the control plane's namespace.
    pub fn local_url(&self) -> String {
        format!("https://127.0.0.1:{APISERVER_PORT}")
    }

    /// Writes a kubeconfig at `path` that authenticates as ServiceAccount
    /// `namespace/sa` with a token from the TokenRequest API, bound to Pod
    /// `namespace/pod` when given (it must exist) as the kubelet gives a pod,
    /// and dials `server` ([`ControlPlane::server_url`] from the nodes,
    /// [`ControlPlane::local_url`] for `kubectl` here).
    pub fn service_account_kubeconfig(
        &self,
        namespace: &str,
        sa: &str,
        pod: Option<&str>,
        server: &str,
        path: &Path,
    ) -> Result<()> {
        let mut spec = json!({"expirationSeconds": 86400});
        if let Some(pod) = pod {
            let uid = self
                .kubectl(&[
                    "get",
                    "pod",
                    "-n",
                    namespace,
                    pod,
                    "-o",
                    "jsonpath={.metadata.uid}",
                ])?
                .trim()
                .to_string();
            spec["boundObjectRef"] =
                json!({"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": uid});
        }
        let req = json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": spec,
        });
        // `create --raw` works with every kubectl version (`create token` needs 1.24).
        let out = self.kubectl_stdin(
            &[
                "create",
                "--raw",
                &format!("/api/v1/namespaces/{namespace}/serviceaccounts/{sa}/token"),
                "-f",
                "-",
            ],
            &req.to_string(),
        )?;
        let v: Value = serde_json::from_str(&out).context("TokenRequest answer")?;
        let token = v["status"]["token"]
            .as_str()
            .context("TokenRequest answer without status.token")?;
        write_private(
            path,
            &kubeconfig(server, &self.pki.ca_cert, json!({"token": token}))?.to_string(),
        )
    }
}

fn checked(args: &[&str], out: Output) -> Result<String> {
    if !out.status.success() {
        bail!(
            "kubectl {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
