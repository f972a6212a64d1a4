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
    /// Keys made for apps (`namespace/name`) before their arrival (see
    /// [`KeyStore::prepare`]), loaded or made this run.
    prepared: std::collections::BTreeMap<String, PrivateKey>,
    /// File stems under `prepared/`: scanned at open, kept up to date.
    prepared_on_disk: std::collections::BTreeSet<String>,
}

/// The file stem of an app's prepared key: app names hold `/` and may be
/// long, so a hash of `namespace/name`.
fn prepared_stem(app: &str) -> String {
    use sha2::{Digest, Sha256};
    hex(&Sha256::digest(app.as_bytes())[..12])
}

/// Reads a 32-byte key file; `Ok(None)` when there is none.
fn read_key(path: &Path) -> Result<Option<PrivateKey>, Error> {
    match fs::read(path) {
        Ok(b) if b.len() == 32 => {
            let mut a = [0u8; 32];
            a.copy_from_slice(&b);
            Ok(Some(PrivateKey::from_bytes(a)))
        }
        Ok(_) => Err(Error::Key {
            path: path.to_path_buf(),
            message: "key file is not 32 bytes; refusing to overwrite it".into(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Writes a fresh key to `path` (0600, through a temporary file).
fn write_new_key(path: &Path) -> Result<PrivateKey, Error> {
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
    fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    Ok(key)
}

fn stems(dir: &Path) -> Result<std::collections::BTreeSet<String>, Error> {
    Ok(fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".key"))
                .map(String::from)
        })
        .collect())
}

impl KeyStore {
    /// Opens (creating, mode 0700) the key directory.
    pub fn open(data_dir: &Path) -> Result<Self, Error> {
        let dir = data_dir.join("keys");
        let prepared_dir = dir.join("prepared");
        for d in [&dir, &prepared_dir] {
            fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
            fs::set_permissions(d, fs::Permissions::from_mode(0o700))
                .map_err(|e| Error::io(d, e))?;
        }
        Ok(KeyStore {
            on_disk: stems(&dir)?,
            prepared_on_disk: stems(&prepared_dir)?,
            dir,
            loaded: Default::default(),
            prepared: Default::default(),
        })
    }

    fn path(&self, app_id: &str) -> PathBuf {
        self.dir.join(format!("{app_id}.key"))
    }

    fn prepared_path(&self, stem: &str) -> PathBuf {
        self.dir.join("prepared").join(format!("{stem}.key"))
    }

    /// The key of app `app` (`namespace/name`) with id `app_id`: loaded, or
    /// the one prepared for the app (which its peers may already have been
    /// given), or generated; stored 0600 on first use.
    pub fn get_or_create(&mut self, app_id: &str, app: &str) -> Result<PrivateKey, Error> {
        if let Some(k) = self.loaded.get(app_id) {
            return Ok(k.clone());
        }
        let path = self.path(app_id);
        let key = match read_key(&path)? {
            Some(k) => k,
            None => match self.adopt_prepared(app, &path)? {
                Some(k) => k,
                None => write_new_key(&path)?,
            },
        };
        self.loaded.insert(app_id.to_string(), key.clone());
        self.on_disk.insert(app_id.to_string());
        Ok(key)
    }

    /// Moves the app's prepared key (if any) to `path`: a rename, so the
    /// key is the app's or still prepared, never lost or in both places.
    fn adopt_prepared(&mut self, app: &str, path: &Path) -> Result<Option<PrivateKey>, Error> {
        let stem = prepared_stem(app);
        if !self.prepared_on_disk.contains(&stem) {
            return Ok(None);
        }
        let from = self.prepared_path(&stem);
        let Some(key) = read_key(&from)? else {
            self.prepared_on_disk.remove(&stem);
            return Ok(None);
        };
        fs::rename(&from, path).map_err(|e| Error::io(path, e))?;
        self.prepared.remove(app);
        self.prepared_on_disk.remove(&stem);
        Ok(Some(key))
    }

    /// A key for app `app` (`namespace/name`) that is not on this node yet,
    /// made (0600) on first call and kept until the app arrives
    /// ([`get_or_create`](Self::get_or_create) takes it) or is forgotten
    /// ([`retain_prepared`](Self::retain_prepared)).
    pub fn prepare(&mut self, app: &str) -> Result<PrivateKey, Error> {
        if let Some(k) = self.prepared.get(app) {
            return Ok(k.clone());
        }
        let stem = prepared_stem(app);
        let path = self.prepared_path(&stem);
        let key = match read_key(&path)? {
            Some(k) => k,
            None => write_new_key(&path)?,
        };
        self.prepared.insert(app.to_string(), key.clone());
        self.prepared_on_disk.insert(stem);
        Ok(key)
    }

    /// Removes the prepared keys of every app not in `apps`, including
    /// files a previous run left (known by their hashed names only).
    pub fn retain_prepared(
        &mut self,
        apps: &std::collections::BTreeSet<String>,
    ) -> Result<(), Error> {
        let keep: std::collections::BTreeSet<String> =
            apps.iter().map(|a| prepared_stem(a)).collect();
        for stem in self.prepared_on_disk.clone() {
            if keep.contains(&stem) {
                continue;
            }
            let path = self.prepared_path(&stem);
            match fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::io(&path, e))
                }
                _ => {
                    self.prepared_on_disk.remove(&stem);
                }
            }
        }
        self.prepared.retain(|a, _| apps.contains(a));
        Ok(())
    }

    /// Whether any prepared key is on disk.
    pub fn has_prepared(&self) -> bool {
        !self.prepared_on_disk.is_empty()
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
        let k1 = ks.get_or_create("abc", "demo/abc").unwrap();
        let k2 = ks.get_or_create("abc", "demo/abc").unwrap();
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
        assert!(ks.get_or_create("bad", "demo/bad").is_err());
    }

    #[test]
    fn a_prepared_key_becomes_the_apps_key_and_survives_a_restart() {
        let d = tempfile::tempdir().unwrap();
        let mut ks = KeyStore::open(d.path()).unwrap();
        let pre = ks.prepare("demo/web").unwrap();
        assert_eq!(ks.prepare("demo/web").unwrap(), pre, "made once");
        let file = fs::read_dir(d.path().join("keys/prepared"))
            .unwrap()
            .flatten()
            .next()
            .unwrap()
            .path();
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // A restart finds it again.
        let mut ks = KeyStore::open(d.path()).unwrap();
        assert_eq!(ks.prepare("demo/web").unwrap(), pre);
        // The app arrives: it gets exactly that key, and the prepared one is gone.
        let k = ks.get_or_create("id1", "demo/web").unwrap();
        assert_eq!(k, pre);
        assert!(!file.exists());
        assert!(!ks.has_prepared());
        // Another app gets a fresh key, not someone's prepared one.
        let other = ks.prepare("demo/db").unwrap();
        let fresh = ks.get_or_create("id2", "demo/api").unwrap();
        assert_ne!(fresh, other);
        assert!(ks.has_prepared());
    }

    #[test]
    fn prepared_keys_of_apps_no_longer_wanted_go_even_from_an_earlier_run() {
        let d = tempfile::tempdir().unwrap();
        let mut ks = KeyStore::open(d.path()).unwrap();
        let web = ks.prepare("demo/web").unwrap();
        ks.prepare("demo/gone").unwrap();
        let mut ks = KeyStore::open(d.path()).unwrap();
        ks.retain_prepared(&["demo/web".to_string()].into())
            .unwrap();
        assert_eq!(
            fs::read_dir(d.path().join("keys/prepared"))
                .unwrap()
                .count(),
            1
        );
        assert_eq!(ks.prepare("demo/web").unwrap(), web);
        ks.retain_prepared(&Default::default()).unwrap();
        assert!(!ks.has_prepared());
        assert_eq!(
            fs::read_dir(d.path().join("keys/prepared"))
                .unwrap()
                .count(),
            0
        );
    }
}
