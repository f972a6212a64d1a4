//! Private keys: generated on the node, stored 0600 in a 0700 directory, never
//! logged or serialised. Only the public key leaves this module as text.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use x25519_dalek::{PublicKey, StaticSecret};

use crate::error::Error;

/// A WireGuard private key. `Debug` is redacted so it cannot reach a log line.
/// Its public key is derived once (a scalar multiplication: every pass asks
/// for every app's, and at 200 apps deriving it each time was a sixth of
/// the daemon's CPU at rest).
#[derive(Clone)]
pub struct PrivateKey(StaticSecret, String);

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

impl PartialEq for PrivateKey {
    fn eq(&self, other: &Self) -> bool {
        self.1 == other.1
    }
}
impl Eq for PrivateKey {}

impl PrivateKey {
    /// A fresh key from the OS random source.
    pub fn generate() -> Self {
        Self::new(StaticSecret::random_from_rng(rand_core::OsRng))
    }
    /// Raw bytes, for handing to WireGuard only.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }
    /// Hex form (the UAPI wire format), for handing to WireGuard only.
    pub fn to_hex(&self) -> String {
        hex(&self.0.to_bytes())
    }
    /// The matching public key, base64.
    pub fn public_key(&self) -> String {
        self.1.clone()
    }
    fn new(secret: StaticSecret) -> Self {
        let public = B64.encode(PublicKey::from(&secret).as_bytes());
        PrivateKey(secret, public)
    }
    fn from_bytes(b: [u8; 32]) -> Self {
        Self::new(StaticSecret::from(b))
    }
}

/// Lowercase hex of bytes.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// base64 public key -> hex (UAPI form). `None` if it is not a 32-byte key.
pub fn public_b64_to_hex(b64: &str) -> Option<String> {
    let v = B64.decode(b64).ok()?;
    (v.len() == 32).then(|| hex(&v))
}

/// hex public key (UAPI form) -> base64.
pub fn public_hex_to_b64(h: &str) -> Option<String> {
    if h.len() != 64 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..32)
        .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).ok())
        .collect();
    bytes.map(|b| B64.encode(b))
}

/// One key file per app id under `<data-dir>/keys`, cached in memory so a
/// reconcile pass reads no file once the keys are loaded.
#[derive(Clone, Debug)]
pub struct KeyStore {
    dir: PathBuf,
    loaded: std::collections::BTreeMap<String, PrivateKey>,
    /// App ids with a key file: scanned once at open (keys a previous run
    /// left), then kept up to date here.
    on_disk: std::collections::BTreeSet<String>,
}

impl KeyStore {
    /// Opens (creating, mode 0700) the key directory.
    pub fn open(data_dir: &Path) -> Result<Self, Error> {
        let dir = data_dir.join("keys");
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(&dir, e))?;
        let on_disk = fs::read_dir(&dir)
            .map_err(|e| Error::io(&dir, e))?
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".key"))
                    .map(String::from)
            })
            .collect();
        Ok(KeyStore {
            dir,
            loaded: Default::default(),
            on_disk,
        })
    }

    fn path(&self, app_id: &str) -> PathBuf {
        self.dir.join(format!("{app_id}.key"))
    }

    /// The app's key, generated and stored (0600) on first use.
    pub fn get_or_create(&mut self, app_id: &str) -> Result<PrivateKey, Error> {
        if let Some(k) = self.loaded.get(app_id) {
            return Ok(k.clone());
        }
        let key = self.load_or_create(app_id)?;
        self.loaded.insert(app_id.to_string(), key.clone());
        self.on_disk.insert(app_id.to_string());
        Ok(key)
    }

    fn load_or_create(&self, app_id: &str) -> Result<PrivateKey, Error> {
        let path = self.path(app_id);
        match fs::read(&path) {
            Ok(b) if b.len() == 32 => {
                let mut a = [0u8; 32];
                a.copy_from_slice(&b);
                return Ok(PrivateKey::from_bytes(a));
            }
            Ok(_) => {
                return Err(Error::Key {
                    path,
                    message: "key file is not 32 bytes; refusing to overwrite it".into(),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&path, e)),
        }
        let key = PrivateKey::generate();
        let tmp = path.with_extension("tmp");
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| Error::io(&tmp, e))?;
        f.write_all(&key.to_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| Error::io(&tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        Ok(key)
    }

    /// App ids that have a key on disk.
    pub fn app_ids(&self) -> Vec<String> {
        self.on_disk.iter().cloned().collect()
    }

    /// Removes the app's key (the app left this node).
    pub fn remove(&mut self, app_id: &str) -> Result<(), Error> {
        match fs::remove_file(self.path(app_id)) {
            // Still on disk: keep it listed so the next pass retries.
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io(&self.path(app_id), e))
            }
            _ => {
                self.loaded.remove(app_id);
                self.on_disk.remove(app_id);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_once_with_mode_0600_and_reloaded() {
        let d = tempfile::tempdir().unwrap();
        let mut ks = KeyStore::open(d.path()).unwrap();
        let k1 = ks.get_or_create("abc").unwrap();
        let k2 = ks.get_or_create("abc").unwrap();
        assert_eq!(k1.public_key(), k2.public_key());
        let mode = fs::metadata(d.path().join("keys/abc.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = fs::metadata(d.path().join("keys"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);
        assert_eq!(ks.app_ids(), vec!["abc".to_string()]);
        ks.remove("abc").unwrap();
        assert!(ks.app_ids().is_empty());
    }

    #[test]
    fn debug_never_prints_the_key() {
        let k = PrivateKey::generate();
        let s = format!("{k:?}");
        assert!(!s.contains(&k.to_hex()) && s.contains("redacted"));
    }

    #[test]
    fn public_key_hex_round_trip() {
        let k = PrivateKey::generate();
        let h = public_b64_to_hex(&k.public_key()).unwrap();
        assert_eq!(public_hex_to_b64(&h).unwrap(), k.public_key());
        assert!(public_b64_to_hex("not-a-key").is_none());
    }

    #[test]
    fn truncated_key_file_is_an_error_not_a_new_key() {
        let d = tempfile::tempdir().unwrap();
        let mut ks = KeyStore::open(d.path()).unwrap();
        fs::write(d.path().join("keys/bad.key"), b"short").unwrap();
        assert!(ks.get_or_create("bad").is_err());
    }
}
