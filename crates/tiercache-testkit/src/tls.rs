//! Throwaway TLS material for test servers: a CA, and a server and a client
//! certificate it signs, for `127.0.0.1` and `localhost`, made with rcgen.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use tempfile::TempDir;

use crate::error::{Result, TestkitError};

/// PEM files of a fresh CA and of a server and a client certificate signed
/// by it (subject alternative names `127.0.0.1`, `::1` and `localhost`),
/// written into one directory:
/// `ca.pem`, `server.pem`, `server.key`, `client.pem`, `client.key`.
///
/// Every call makes a new CA, so two `TlsCerts` never trust each other's
/// certificates (handy for "wrong CA" tests).
#[derive(Debug)]
pub struct TlsCerts {
    dir: PathBuf,
    // Kept only to remove the dir on drop, when the certs own it.
    _owned: Option<TempDir>,
}

impl TlsCerts {
    /// Generates the CA and certificates into `dir` (which must exist).
    pub fn generate_in(dir: &Path) -> Result<Self> {
        write_all(dir)?;
        Ok(TlsCerts {
            dir: dir.to_path_buf(),
            _owned: None,
        })
    }

    /// The files already generated into `dir`.
    pub(crate) fn at(dir: &Path) -> Self {
        TlsCerts {
            dir: dir.to_path_buf(),
            _owned: None,
        }
    }

    /// Generates the CA and certificates into a new temp dir, removed when
    /// this is dropped.
    pub fn generate() -> Result<Self> {
        let owned = tempfile::Builder::new()
            .prefix("tiercache-tls-")
            .tempdir()?;
        write_all(owned.path())?;
        Ok(TlsCerts {
            dir: owned.path().to_path_buf(),
            _owned: Some(owned),
        })
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA certificate (PEM): what a client trusts.
    pub fn ca_cert_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The CA certificate's PEM bytes.
    pub fn ca_pem(&self) -> Result<Vec<u8>> {
        Ok(std::fs::read(self.ca_cert_path())?)
    }

    /// The server certificate (PEM).
    pub fn server_cert_path(&self) -> PathBuf {
        self.dir.join("server.pem")
    }

    /// The server's private key (PEM, PKCS#8).
    pub fn server_key_path(&self) -> PathBuf {
        self.dir.join("server.key")
    }

    /// A client certificate (PEM), for mutual TLS.
    pub fn client_cert_path(&self) -> PathBuf {
        self.dir.join("client.pem")
    }

    /// The client's private key (PEM, PKCS#8).
    pub fn client_key_path(&self) -> PathBuf {
        self.dir.join("client.key")
    }
}

fn tls_error(what: &str, e: rcgen::Error) -> TestkitError {
    TestkitError::Command(format!("generating the test {what}: {e}"))
}

fn write_all(dir: &Path) -> Result<()> {
    let mut ca_params =
        CertificateParams::new(Vec::<String>::new()).map_err(|e| tls_error("CA", e))?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // A name of its own: another test CA must not even look like the issuer.
    let unique = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("tiercache test CA {unique}"));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().map_err(|e| tls_error("CA key", e))?;
    let ca = ca_params
        .self_signed(&ca_key)
        .map_err(|e| tls_error("CA", e))?;
    std::fs::write(dir.join("ca.pem"), ca.pem())?;

    for (name, purpose) in [
        ("server", ExtendedKeyUsagePurpose::ServerAuth),
        ("client", ExtendedKeyUsagePurpose::ClientAuth),
    ] {
        let mut params = CertificateParams::new(vec![
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
            "localhost".to_owned(),
        ])
        .map_err(|e| tls_error(name, e))?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("tiercache test {name}"));
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![purpose];
        let key = KeyPair::generate().map_err(|e| tls_error(name, e))?;
        let cert = params
            .signed_by(&key, &ca, &ca_key)
            .map_err(|e| tls_error(name, e))?;
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem())?;
        write_private(&dir.join(format!("{name}.key")), &key.serialize_pem())?;
    }
    Ok(())
}

/// Writes a key readable by its owner only (Postgres insists on it).
fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}
