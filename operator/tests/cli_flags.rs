//! The operator refuses an app range size that does not fit its pool,
//! naming the flag, before it touches anything.

use std::process::Command;

#[test]
fn an_app_prefix_length_outside_the_pool_is_refused_naming_the_flag() {
    let dir = tempfile::TempDir::new().unwrap();
    for (mode, extra) in [
        ("standalone", vec!["--manifests", "/nonexistent", "--state"]),
        ("kubernetes", vec![]),
    ] {
        let mut args = vec![mode];
        args.extend(extra);
        let state = dir.path().join("state");
        let state = state.to_str().unwrap();
        if mode == "standalone" {
            args.push(state);
        }
        args.extend(["--pool", "10.0.0.0/8", "--app-prefix-length", "7"]);
        let out = Command::new(env!("CARGO_BIN_EXE_weft-operator"))
            .args(&args)
            .env_remove("KUBECONFIG")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{mode}: {err}");
        assert!(
            err.contains("--app-prefix-length 7") && err.contains("10.0.0.0/8"),
            "{mode}: {err}"
        );
        assert!(!dir.path().join("state").exists(), "{mode} wrote state");
    }
}
