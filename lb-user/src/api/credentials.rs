//! Who may use the API and how clients trust it, kept in the store's directory
//! (`api/`, 0700, files 0600, as the store): a CA made on first start (its key
//! never leaves the directory), a server certificate it signs at every start for
//! the address served, and a bearer token. `lb kubeconfig` writes the CA and the
//! token into a kubeconfig; a request without the token is refused (no anonymous
//! reads or writes), so reading the API needs what reading the store needs.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use base64::Engine as _;
use rand::Rng as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::store::files;

const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const TOKEN: &str = "token";
/// The address the server serves, for `lb kubeconfig`.
const ADDRESS: &str = "address";

/// The API's files under the store directory `store`.
pub fn dir(store: &Path) -> PathBuf {
    store.join("api")
}

/// What the server needs: its certificate chain and key (PEM), and the token.
pub struct ServerCredentials {
    pub cert_pem: String,
    pub key_pem: String,
    pub token: String,
}

/// The CA's name and uses (the same at every start: the issuer of each server
/// certificate is rebuilt from them and the stored key). rcgen's default validity
/// (1975 to 4096) is kept: the CA lives as long as the store.
fn ca_params() -> Result<CertificateParams> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, "lb-api-ca");
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(p)
}

fn read(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn write(path: &Path, data: &str) -> Result<()> {
    files::replace_private(path, data.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// The CA (made on first use), the token (likewise), and a fresh server
/// certificate for `listen` (and localhost / 127.0.0.1), under `store`'s `api/`.
pub fn server(store: &Path, listen: SocketAddr) -> Result<ServerCredentials> {
    let dir = dir(store);
    files::private_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca_key = match read(&dir.join(CA_KEY))? {
        Some(pem) => KeyPair::from_pem(&pem).context("the API's CA key is corrupt")?,
        None => {
            let key = KeyPair::generate()?;
            let cert = ca_params()?.self_signed(&key)?;
            write(&dir.join(CA_KEY), &key.serialize_pem())?;
            write(&dir.join(CA_CERT), &cert.pem())?;
            key
        }
    };
    let token = match read(&dir.join(TOKEN))? {
        Some(t) if !t.trim().is_empty() => t.trim().to_string(),
        _ => {
            let bytes: [u8; 32] = rand::rng().random();
            let t: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            write(&dir.join(TOKEN), &t)?;
            t
        }
    };
    let issuer = Issuer::new(ca_params()?, ca_key);
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["localhost".to_string()])?;
    params
        .distinguished_name
        .push(DnType::CommonName, "lb-api-server");
    let mut ips = vec![IpAddr::from([127, 0, 0, 1])];
    if !listen.ip().is_unspecified() && !ips.contains(&listen.ip()) {
        ips.push(listen.ip());
    }
    params
        .subject_alt_names
        .extend(ips.into_iter().map(SanType::IpAddress));
    let cert = params.signed_by(&key, &issuer)?;
    Ok(ServerCredentials {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        token,
    })
}

/// Records the address the server listens on (for `lb kubeconfig`).
pub fn set_address(store: &Path, addr: SocketAddr) -> Result<()> {
    write(&dir(store).join(ADDRESS), &addr.to_string())
}

/// A kubeconfig for the API served from `store` (at `server`, else the address
/// the running server recorded), with its CA and token.
pub fn kubeconfig(store: &Path, server: Option<&str>) -> Result<String> {
    let dir = dir(store);
    let missing = || {
        format!(
            "no API credentials in {}: start `lb api-server` (with the same --store) first",
            dir.display()
        )
    };
    let ca = read(&dir.join(CA_CERT))?.with_context(missing)?;
    let token = read(&dir.join(TOKEN))?.with_context(missing)?;
    let server = match server {
        Some(s) => s.to_string(),
        None => {
            let addr = read(&dir.join(ADDRESS))?.with_context(missing)?;
            format!("https://{}", addr.trim())
        }
    };
    let ca = base64::engine::general_purpose::STANDARD.encode(ca);
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "lb", "cluster": {"server": server, "certificate-authority-data": ca}}],
        "users": [{"name": "lb", "user": {"token": token.trim()}}],
        "contexts": [{"name": "lb", "context": {"cluster": "lb", "user": "lb", "namespace": "default"}}],
        "current-context": "lb",
    });
    Ok(serde_yaml_ng::to_string(&config)?)
}
