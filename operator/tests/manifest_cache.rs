//! The manifest cache skips reading a file whose stamp (inode, size, mtime,
//! ctime) is the one of its last read once it has settled; every change of
//! content must still be seen, also one that keeps the size and puts the
//! modification time back.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;
use weft_operator::standalone::manifests::ManifestCache;

fn app(tier: &str) -> String {
    format!(
        "apiVersion: weft.dev/v1alpha1\nkind: MeshApp\nmetadata: {{name: web, namespace: demo}}\nspec:\n  selector: {{matchLabels: {{tier: {tier}}}}}\n"
    )
}

fn seen(cache: &mut ManifestCache, dir: &Path) -> String {
    cache.refresh(dir).unwrap();
    format!("{:?}", cache.entries(&|_: &Path| Vec::new()))
}

fn set_mtime(path: &Path, when: &str) {
    let st = Command::new("touch")
        .arg("-d")
        .arg(when)
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn every_change_is_seen_even_with_the_same_size_and_an_old_mtime() {
    let dir = TempDir::new().unwrap();
    let f = dir.path().join("web.yaml");
    fs::write(&f, app("web")).unwrap();
    set_mtime(&f, "@1700000000");
    let mut cache = ManifestCache::default();
    assert!(seen(&mut cache, dir.path()).contains("\"web\""));
    // Settled (ctime too): the next passes may skip the read.
    std::thread::sleep(Duration::from_millis(2100));
    assert!(seen(&mut cache, dir.path()).contains("\"web\""));
    assert!(seen(&mut cache, dir.path()).contains("\"web\""));

    // Same size, mtime put back to the old value, and settled again before
    // the next pass: only ctime tells.
    fs::write(&f, app("wob")).unwrap();
    set_mtime(&f, "@1700000000");
    std::thread::sleep(Duration::from_millis(2100));
    assert!(seen(&mut cache, dir.path()).contains("\"wob\""));
    assert!(seen(&mut cache, dir.path()).contains("\"wob\""));

    // Replaced by another file of the same size and times (editors write a
    // new inode and rename it): the inode tells.
    let tmp = dir.path().join(".web.yaml.swp");
    fs::write(&tmp, app("wib")).unwrap();
    set_mtime(&tmp, "@1700000000");
    fs::rename(&tmp, &f).unwrap();
    std::thread::sleep(Duration::from_millis(2100));
    assert!(seen(&mut cache, dir.path()).contains("\"wib\""));
}
