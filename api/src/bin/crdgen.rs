//! Writes crds/*.yaml from the API types: `cargo run -p weft-api --bin crdgen -- crds`.

fn main() -> std::io::Result<()> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "crds".into());
    std::fs::create_dir_all(&dir)?;
    for (name, yaml) in weft_api::crd::all_crds_yaml() {
        let path = std::path::Path::new(&dir).join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, yaml)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
