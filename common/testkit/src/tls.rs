//! A throwaway certificate authority and a server certificate for `127.0.0.1`/`localhost`, made
//! with the `openssl` command, for tests of the TLS connections to managed stores (`rediss://`,
//! PostgreSQL `sslmode=verify-full`, NATS `tls://`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;

/// PEM files in a temporary directory, removed when dropped.
pub struct TestCertificates {
    /// The authority's certificate: what a client trusts (`SSL_CERT_FILE`, `sslrootcert`).
    pub ca: PathBuf,
    /// The server's certificate (names IP 127.0.0.1 and DNS localhost) and its key.
    pub cert: PathBuf,
    pub key: PathBuf,
    dir: PathBuf,
}

impl TestCertificates {
    /// A new authority (P-256, valid for a day) and a server certificate it signed.
    pub fn generate() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("shopstack-tls-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        let certificates = Self {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            dir,
        };
        let ca_key = certificates.dir.join("ca.key");
        let request = certificates.dir.join("server.csr");
        let extensions = certificates.dir.join("server.ext");
        std::fs::write(
            &extensions,
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )?;
        let curve = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        openssl(&certificates.dir, |command| {
            command
                .args(["req", "-x509"])
                .args(curve)
                .arg("-keyout")
                .arg(&ca_key)
                .arg("-out")
                .arg(&certificates.ca)
                .args(["-days", "1", "-subj", "/CN=ShopStack test CA"]);
        })?;
        openssl(&certificates.dir, |command| {
            command
                .arg("req")
                .args(curve)
                .arg("-keyout")
                .arg(&certificates.key)
                .arg("-out")
                .arg(&request)
                .args(["-subj", "/CN=localhost"]);
        })?;
        openssl(&certificates.dir, |command| {
            command
                .args(["x509", "-req", "-in"])
                .arg(&request)
                .arg("-CA")
                .arg(&certificates.ca)
                .arg("-CAkey")
                .arg(&ca_key)
                .args(["-CAcreateserial", "-days", "1", "-out"])
                .arg(&certificates.cert)
                .arg("-extfile")
                .arg(&extensions);
        })?;
        Ok(certificates)
    }
}

fn openssl(dir: &Path, arguments: impl FnOnce(&mut Command)) -> anyhow::Result<()> {
    let mut command = Command::new("openssl");
    command.current_dir(dir);
    arguments(&mut command);
    let output = command
        .output()
        .context("the openssl command is needed for the TLS tests (Debian's openssl)")?;
    anyhow::ensure!(
        output.status.success(),
        "openssl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

impl Drop for TestCertificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
