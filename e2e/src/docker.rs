//! Real containers on the machine's Docker engine, for the edge-host tests.
//! Nothing can be pulled here, so [`TinyImage`] builds a `FROM scratch`
//! image holding only Debian's busybox-static; every image and container
//! carries the run's unique prefix and is removed on drop.

use std::path::Path;
use std::process::{Command, Output};

use anyhow::{bail, Context, Result};

/// Runs `docker args...`; its stdout, or an error with its stderr.
pub fn docker(args: &[&str]) -> Result<String> {
    let out = docker_output(args)?;
    if !out.status.success() {
        bail!(
            "docker {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `docker args...` and returns whatever it did.
pub fn docker_output(args: &[&str]) -> Result<Output> {
    Command::new("docker")
        .args(args)
        .output()
        .with_context(|| format!("cannot run docker {}", args.join(" ")))
}

/// What the container tests need and this host lacks (a Docker CLI, a
/// running engine, busybox-static), if anything.
pub fn missing_docker() -> Option<String> {
    let mut missing = Vec::new();
    match docker_output(&["version", "--format", "{{.Server.Version}}"]) {
        Err(e) => missing.push(format!("docker ({e:#})")),
        Ok(o) if !o.status.success() => missing.push(format!(
            "a running Docker engine (`docker version`: {})",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Ok(_) => {}
    }
    if !Path::new(BUSYBOX).exists() {
        missing.push(format!("busybox-static ({BUSYBOX})"));
    }
    (!missing.is_empty()).then(|| missing.join(", "))
}

const BUSYBOX: &str = "/bin/busybox";

/// A local image: busybox-static in an otherwise empty file system.
#[derive(Debug)]
pub struct TinyImage {
    tag: String,
}

impl TinyImage {
    /// Builds `tag` (removed again on drop).
    pub fn build(tag: &str) -> Result<TinyImage> {
        let ctx = tempfile::tempdir()?;
        std::fs::copy(BUSYBOX, ctx.path().join("busybox"))
            .with_context(|| format!("copy {BUSYBOX}"))?;
        std::fs::write(
            ctx.path().join("Dockerfile"),
            "FROM scratch\nCOPY busybox /bin/busybox\n\
             RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
             CMD [\"/bin/sh\"]\n",
        )?;
        let image = TinyImage { tag: tag.into() };
        docker(&["build", "-q", "-t", tag, &ctx.path().to_string_lossy()])?;
        Ok(image)
    }

    /// The image's tag.
    pub fn tag(&self) -> &str {
        &self.tag
    }
}

impl Drop for TinyImage {
    fn drop(&mut self) {
        let _ = docker_output(&["rmi", "--force", &self.tag]);
    }
}

/// A container (`docker run -d --network none`), removed on drop.
#[derive(Debug)]
pub struct Container {
    name: String,
}

impl Container {
    /// Starts `args` (e.g. `sleep 3600`) in `image` under `name` with `labels`,
    /// with no network of Docker's: only loopback until Weft adds `weft0`.
    pub fn run(
        image: &str,
        name: &str,
        labels: &[(&str, &str)],
        args: &[&str],
    ) -> Result<Container> {
        Self::run_on(image, name, "none", labels, args)
    }

    /// Like [`Container::run`] on Docker network `network` (e.g.
    /// `container:OTHER` to share another container's namespace).
    pub fn run_on(
        image: &str,
        name: &str,
        network: &str,
        labels: &[(&str, &str)],
        args: &[&str],
    ) -> Result<Container> {
        let mut cmd = vec!["run", "-d", "--network", network, "--name", name];
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for l in &labels {
            cmd.extend(["--label", l.as_str()]);
        }
        cmd.push(image);
        cmd.extend(args);
        // Owned from here on, so a failed start is still removed.
        let c = Container { name: name.into() };
        docker(&cmd)?;
        Ok(c)
    }

    /// The container's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Host pid of its init process (0 when stopped).
    pub fn pid(&self) -> Result<u32> {
        let s = docker(&["inspect", "--format", "{{.State.Pid}}", &self.name])?;
        s.trim()
            .parse()
            .with_context(|| format!("pid of container {}: {s:?}", self.name))
    }

    /// `docker exec NAME args...` (its output, whether or not it succeeded).
    pub fn exec(&self, args: &[&str]) -> Result<Output> {
        let mut cmd = vec!["exec", self.name.as_str()];
        cmd.extend(args);
        docker_output(&cmd)
    }

    /// `docker stop` (the container and its namespace go; it can start again).
    pub fn stop(&self) -> Result<()> {
        docker(&["stop", "--time", "1", &self.name]).map(drop)
    }

    /// `docker start` again after [`Container::stop`].
    pub fn start(&self) -> Result<()> {
        docker(&["start", &self.name]).map(drop)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker_output(&["rm", "--force", &self.name]);
    }
}

/// Containers and images whose name contains `prefix` (leftover check).
pub fn leftovers(prefix: &str) -> Result<Vec<String>> {
    let mut out: Vec<String> = docker(&["ps", "-a", "--format", "{{.Names}}"])?
        .lines()
        .chain(docker(&["images", "--format", "{{.Repository}}:{{.Tag}}"])?.lines())
        .filter(|l| l.contains(prefix))
        .map(str::to_string)
        .collect();
    out.sort();
    Ok(out)
}
