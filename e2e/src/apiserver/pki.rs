//! Certificates and keys for a test control plane, made on the spot with
//! rcgen: a CA, the API server's serving certificate, an admin client
//! certificate (group `system:masters`) and the service-account signing key.
//! Nothing here is reused across runs; every file is written 0600.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// Paths of everything [`Pki::create`] wrote.
#[derive(Clone, Debug)]
pub struct Pki {
    /// CA certificate (trusted by clients; signs client certificates).
    pub ca_cert: PathBuf,
    /// API server serving certificate and key.
    pub server_cert: PathBuf,
    /// Key of `server_cert`.
    pub server_key: PathBuf,
    /// Admin client certificate (`system:masters`).
    pub admin_cert: PathBuf,
    /// Key of `admin_cert`.
    pub admin_key: PathBuf,
    /// Service-account token signing key (ECDSA P-256, PKCS#8).
    pub sa_key: PathBuf,
    /// Its public half (what the API server verifies tokens with).
    pub sa_pub: PathBuf,
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
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

impl Pki {
    /// Makes a CA and the certificates in `dir`. `server_ips` and
    /// `server_names` go into the serving certificate's subject alternative
    /// names (clients check the address they dial against them).
    pub fn create(dir: &Path, server_ips: &[IpAddr], server_names: &[&str]) -> Result<Pki> {
        std::fs::create_dir_all(dir)?;
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "weft-e2e-ca");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key)?;

        let mut names: Vec<String> = server_names.iter().map(|s| s.to_string()).collect();
        names.extend(server_ips.iter().map(IpAddr::to_string));
        let server_key = KeyPair::generate()?;
        let mut sp = CertificateParams::new(names)?;
        sp.distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        sp.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = sp.signed_by(&server_key, &ca_cert, &ca_key)?;

        let admin_key = KeyPair::generate()?;
        let mut ap = CertificateParams::new(Vec::<String>::new())?;
        ap.distinguished_name
            .push(DnType::CommonName, "weft-e2e-admin");
        ap.distinguished_name
            .push(DnType::OrganizationName, "system:masters");
        ap.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        ap.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let admin_cert = ap.signed_by(&admin_key, &ca_cert, &ca_key)?;

        let sa_key = KeyPair::generate()?;

        let pki = Pki {
            ca_cert: dir.join("ca.crt"),
            server_cert: dir.join("apiserver.crt"),
            server_key: dir.join("apiserver.key"),
            admin_cert: dir.join("admin.crt"),
            admin_key: dir.join("admin.key"),
            sa_key: dir.join("sa.key"),
            sa_pub: dir.join("sa.pub"),
        };
        write_private(&pki.ca_cert, &ca_cert.pem())?;
        write_private(&pki.server_cert, &server_cert.pem())?;
        write_private(&pki.server_key, &server_key.serialize_pem())?;
        write_private(&pki.admin_cert, &admin_cert.pem())?;
        write_private(&pki.admin_key, &admin_key.serialize_pem())?;
        write_private(&pki.sa_key, &sa_key.serialize_pem())?;
        write_private(&pki.sa_pub, &sa_key.public_key_pem())?;
        Ok(pki)
    }
}
