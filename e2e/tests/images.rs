//! The container images: `images/build.sh` (what `make images` runs after
//! `cargo build --release`) builds `weft-operator` and `weft-node-daemon` from
//! the workspace's binaries, and each image runs on its own, without a network:
//! the binaries find their shared libraries, the daemon's `nft` works, the CNI
//! plugin answers VERSION and busybox gives a shell. It also checks that
//! `config/manager` and `config/node-daemon` use the names `make images` tags.
//!
//! The images are tagged with a unique tag (never `:dev`, so a developer's
//! images are left alone), built from the binaries the suite was given
//! (`$WEFT_BIN_DIR`, debug in `scripts/test.sh`), and removed afterwards.
//! Needs a running Docker engine (plus nftables and busybox-static, which
//! `scripts/setup.sh` installs): without them the test prints SKIPPED, and
//! under CI=true it fails naming what is missing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn stdout_of(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What the image build needs and this host lacks, if anything.
fn missing() -> Option<String> {
    let mut missing = Vec::new();
    let docker = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output();
    match docker {
        Err(e) => missing.push(format!("docker ({e})")),
        Ok(o) if !o.status.success() => missing.push(format!(
            "a running Docker engine (`docker version`: {})",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Ok(_) => {}
    }
    if !Path::new("/bin/busybox").exists() {
        missing.push("busybox-static (/bin/busybox)".into());
    }
    if !Path::new("/usr/sbin/nft").exists() && which("nft").is_none() {
        missing.push("nftables (nft)".into());
    }
    (!missing.is_empty()).then(|| missing.join(", "))
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
    })
}

fn docker_or_skip(test: &str) -> bool {
    match missing() {
        None => true,
        Some(m) => {
            if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                panic!("{test}: cannot run under CI, missing {m}");
            }
            println!("SKIPPED: {test}: missing {m}");
            false
        }
    }
}

/// Images built under a unique tag; removed (with the staging directory) on drop.
struct Images {
    tag: String,
    stage: tempfile::TempDir,
}

impl Images {
    fn build(bin_dir: &Path) -> Images {
        let tag = format!(
            "e2e-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis()
        );
        let images = Images {
            tag,
            stage: tempfile::tempdir().unwrap(),
        };
        stdout_of(
            Command::new("bash")
                .arg(repo().join("images/build.sh"))
                .env("WEFT_BIN_DIR", bin_dir)
                .env("WEFT_IMAGE_TAG", &images.tag)
                .env("WEFT_IMAGE_STAGE", images.stage.path()),
        );
        images
    }

    fn name(&self, image: &str) -> String {
        format!("weft-{image}:{}", self.tag)
    }

    /// `docker run --rm --network none [extra...] IMAGE args...`.
    fn run(&self, image: &str, extra: &[&str], args: &[&str]) -> String {
        stdout_of(
            Command::new("docker")
                .args(["run", "--rm", "--network", "none"])
                .args(extra)
                .arg(self.name(image))
                .args(args),
        )
    }
}

impl Drop for Images {
    fn drop(&mut self) {
        for image in ["operator", "node-daemon"] {
            let _ = Command::new("docker")
                .args(["rmi", "--force", &self.name(image)])
                .output();
        }
    }
}

#[test]
fn images_build_and_run_without_a_network() {
    if !docker_or_skip("images_build_and_run_without_a_network") {
        return;
    }
    let bin_dir = weft_e2e::bin("weft-operator")
        .expect("the binaries (cargo build --workspace --bins)")
        .parent()
        .unwrap()
        .to_path_buf();
    let images = Images::build(&bin_dir);

    // Both images exist, FROM scratch: small, no distro underneath.
    for image in ["operator", "node-daemon"] {
        let size: u64 = stdout_of(Command::new("docker").args([
            "image",
            "inspect",
            "--format",
            "{{.Size}}",
            &images.name(image),
        ]))
        .trim()
        .parse()
        .unwrap();
        assert!(
            size < 400 << 20,
            "{} is {size} bytes: more than the binaries and their libraries",
            images.name(image)
        );
    }

    // The operator: its entrypoint is the binary, as the non-root user.
    let help = images.run("operator", &[], &["--help"]);
    assert!(
        help.contains("kubernetes") && help.contains("standalone"),
        "weft-operator --help: {help}"
    );
    let user = stdout_of(Command::new("docker").args([
        "image",
        "inspect",
        "--format",
        "{{.Config.User}}",
        &images.name("operator"),
    ]));
    assert_eq!(user.trim(), "65532:65532");

    // The daemon, and what it executes: nft (JSON mode needs libjansson;
    // listing the ruleset needs NET_ADMIN in the container's own namespace).
    let help = images.run("node-daemon", &[], &["--help"]);
    assert!(
        help.contains("kubernetes") && help.contains("standalone"),
        "weft-node-daemon --help: {help}"
    );
    let nft = images.run(
        "node-daemon",
        &["--cap-add", "NET_ADMIN", "--entrypoint", "nft"],
        &["-j", "list", "ruleset"],
    );
    assert!(nft.contains("\"nftables\""), "nft -j list ruleset: {nft}");

    // The CNI plugin ships in the daemon image and answers like a plugin.
    let version = images.run(
        "node-daemon",
        &[
            "-e",
            "CNI_COMMAND=VERSION",
            "--entrypoint",
            "/opt/weft/cni/weft-cni",
        ],
        &[],
    );
    let v: serde_json::Value = serde_json::from_str(&version).unwrap();
    assert!(v["supportedVersions"].is_array(), "CNI VERSION: {version}");

    // A shell with the tools the Kubernetes e2e suite and debugging use.
    let tools = images.run(
        "node-daemon",
        &["--entrypoint", "/bin/sh"],
        &["-c", "for t in nsenter ping ip; do command -v $t; done"],
    );
    assert_eq!(tools.lines().count(), 3, "busybox applets: {tools}");
    drop(images);
}

#[test]
fn config_uses_the_image_names_make_images_tags() {
    // `make images` tags weft-<image>:$(IMAGE_TAG), IMAGE_TAG defaulting to dev.
    let makefile = std::fs::read_to_string(repo().join("Makefile")).unwrap();
    assert!(makefile.contains("IMAGE_TAG ?= dev"), "Makefile: IMAGE_TAG");
    let script = std::fs::read_to_string(repo().join("images/build.sh")).unwrap();
    assert!(
        script.contains("-t \"weft-$image:$TAG\""),
        "images/build.sh tags"
    );
    for (file, image) in [
        ("config/manager/operator.yaml", "weft-operator:dev"),
        ("config/node-daemon/daemonset.yaml", "weft-node-daemon:dev"),
    ] {
        let text = std::fs::read_to_string(repo().join(file)).unwrap();
        let images: Vec<&str> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("image:"))
            .map(str::trim)
            .collect();
        assert_eq!(images, [image], "{file}");
        assert!(
            text.contains("imagePullPolicy: IfNotPresent"),
            "{file}: a locally loaded image must not be pulled"
        );
    }
}
