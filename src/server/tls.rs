//! TLS for the listener: the operator's certificate, or a self-signed one
//! generated on first use and kept in the data directory; either can be
//! reloaded from its files while the server runs.

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::{Context, anyhow, bail};
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::tls_stream::TlsAcceptor;
use crate::datadir;

/// The certificate the listener serves: loaded from PEM files, and
/// reloadable in place (SIGHUP) so a renewed certificate is served without
/// a restart. Handshakes after a reload get the new certificate; connections
/// already established keep the one they negotiated.
#[derive(Debug)]
pub struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertFiles {
    /// Loads a PEM certificate chain and a PEM private key (PKCS#8, PKCS#1
    /// or SEC1), checking that they belong together.
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Arc<CertFiles>> {
        Ok(Arc::new(CertFiles {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: RwLock::new(Arc::new(certified_key(cert, key)?)),
        }))
    }

    /// A TLS acceptor serving whichever certificate is current. Only
    /// `http/1.1` is offered over ALPN: the server speaks HTTP/1 (WebSocket
    /// upgrades need it).
    pub fn acceptor(self: &Arc<Self>) -> anyhow::Result<TlsAcceptor> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("the TLS provider supports no safe protocol version")?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// Reads both files again and serves them from the next handshake on.
    /// On error the current certificate stays in use.
    pub fn reload(&self) -> anyhow::Result<()> {
        let fresh = Arc::new(certified_key(&self.cert, &self.key)?);
        // A poisoned lock still holds a whole Arc: replacing it is safe.
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    /// The certificate file, for messages to the operator.
    pub fn cert_path(&self) -> &Path {
        &self.cert
    }
}

impl ResolvesServerCert for CertFiles {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

// An explicit provider: no process-wide default has to be installed, and
// nothing can silently pick another backend.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads and pairs a certificate chain and its key.
fn certified_key(cert: &Path, key: &Path) -> anyhow::Result<CertifiedKey> {
    let certs = read_certs(cert, "--tls-cert")?;
    let key_der = read_key(key)?;
    CertifiedKey::from_der(certs, key_der, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => anyhow!(
            "the private key in {} does not match the certificate in {}: \
             give the key that belongs to this certificate",
            key.display(),
            cert.display()
        ),
        e => anyhow!(
            "cannot use the certificate {} with the key {}: {e}",
            cert.display(),
            key.display()
        ),
    })
}

/// Where the generated pair lives inside the data directory.
pub const SELF_SIGNED_DIR: &str = "tls";

/// `<data_dir>/tls/cert.pem` and `<data_dir>/tls/key.pem`, whether they exist
/// or not: clients trust that certificate by default.
pub fn self_signed_paths(data_dir: &Path) -> (PathBuf, PathBuf) {
    let dir = data_dir.join(SELF_SIGNED_DIR);
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// Returns `<data_dir>/tls/cert.pem` and `<data_dir>/tls/key.pem`, generating
/// a self-signed pair on first use and reusing it afterwards, so a restarted
/// server serves the certificate its clients already accepted.
pub fn self_signed(data_dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (cert, key) = self_signed_paths(data_dir);
    let dir = data_dir.join(SELF_SIGNED_DIR);
    match (cert.exists(), key.exists()) {
        (true, true) => return Ok((cert, key)),
        (false, false) => {}
        _ => bail!(
            "{} holds only one of cert.pem and key.pem: restore the missing file, \
             or delete the directory to have a new self-signed pair generated",
            dir.display()
        ),
    }
    datadir::ensure(data_dir)?;
    generate(&dir).with_context(|| {
        format!(
            "cannot create the self-signed certificate in {}: check that the data \
             directory is writable, or pass --tls-cert and --tls-key",
            dir.display()
        )
    })?;
    Ok((cert, key))
}

/// Writes a new self-signed pair into `dir`, which must not hold one yet.
///
/// Both files are written into a temporary directory that is then renamed
/// to `dir`, so no reader ever sees a certificate without its key. If
/// another process won the race, its pair is kept.
fn generate(dir: &Path) -> anyhow::Result<()> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    names.extend(host_name().filter(|h| h != "localhost"));
    let mut params = rcgen::CertificateParams::new(names)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "chatd self-signed");
    let signing_key = rcgen::KeyPair::generate()?;
    let certificate = params.self_signed(&signing_key)?;

    let tmp = datadir::temp_sibling(dir);
    DirBuilder::new().mode(0o700).create(&tmp)?;
    // The umask may have dropped bits; set the mode exactly.
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o700))?;
    let written = datadir::write_new_file(
        &tmp.join("key.pem"),
        signing_key.serialize_pem().as_bytes(),
        0o600,
    )
    .and_then(|()| {
        datadir::write_new_file(&tmp.join("cert.pem"), certificate.pem().as_bytes(), 0o600)
    })
    // rename() replaces an empty `dir` but never a populated one.
    .and_then(|()| fs::rename(&tmp, dir));
    match written {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            let lost_race = matches!(
                e.kind(),
                io::ErrorKind::DirectoryNotEmpty | io::ErrorKind::AlreadyExists
            ) && dir.join("cert.pem").exists()
                && dir.join("key.pem").exists();
            if lost_race { Ok(()) } else { Err(e.into()) }
        }
    }
}

/// This machine's host name, if it is usable as a DNS name in a certificate.
fn host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the pointer and length describe `buf`, which outlives the call.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let len = buf.iter().position(|&b| b == 0)?;
    let name = std::str::from_utf8(&buf[..len]).ok()?;
    let usable = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    usable.then(|| name.to_owned())
}

/// Reads every certificate from a PEM file, end-entity first. `flag` names
/// the command-line option the path came from, for the error message.
pub(crate) fn read_certs(path: &Path, flag: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = fs::read(path).with_context(|| {
        format!(
            "cannot read the TLS certificate {}: check the {flag} path and its permissions",
            path.display()
        )
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("the TLS certificate {} is not valid PEM", path.display()))?;
    if certs.is_empty() {
        bail!(
            "no certificate found in {}: expected PEM \"BEGIN CERTIFICATE\" blocks, \
             the server's certificate first",
            path.display()
        );
    }
    Ok(certs)
}

/// Reads the first private key from a PEM file.
fn read_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let pem = fs::read(path).with_context(|| {
        format!(
            "cannot read the TLS private key {}: check the --tls-key path and its permissions",
            path.display()
        )
    })?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => anyhow!(
            "no private key found in {}: expected a PEM \"PRIVATE KEY\", \
             \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\" block",
            path.display()
        ),
        e => anyhow!(
            "the TLS private key {} is not valid PEM: {e}",
            path.display()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn err_text<T>(r: anyhow::Result<T>) -> String {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn generated_pair_loads_and_is_reused() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let (cert, key) = self_signed(&data).unwrap();
        assert_eq!(cert, data.join("tls/cert.pem"));
        assert_eq!(key, data.join("tls/key.pem"));
        let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&cert), 0o600);
        assert_eq!(mode(&data.join("tls")), 0o700);
        CertFiles::load(&cert, &key).unwrap();

        let before = (fs::read(&cert).unwrap(), fs::read(&key).unwrap());
        assert_eq!(self_signed(&data).unwrap(), (cert.clone(), key.clone()));
        assert_eq!(before, (fs::read(&cert).unwrap(), fs::read(&key).unwrap()));
        // Only `tls/` is left: no temporary directory.
        let entries: Vec<_> = fs::read_dir(&data)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(entries, ["tls"]);
    }

    #[test]
    fn half_a_pair_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let (_, key) = self_signed(tmp.path()).unwrap();
        fs::remove_file(&key).unwrap();
        assert!(err_text(self_signed(tmp.path())).contains("only one of"));
    }

    #[test]
    fn mismatched_key_is_refused() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let (cert, _) = self_signed(a.path()).unwrap();
        let (_, other_key) = self_signed(b.path()).unwrap();
        let err = err_text(CertFiles::load(&cert, &other_key));
        assert!(err.contains("does not match"), "{err}");
    }

    #[test]
    fn missing_and_empty_files_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed(tmp.path()).unwrap();
        let absent = tmp.path().join("absent.pem");
        let err = err_text(CertFiles::load(&absent, &key));
        assert!(
            err.contains("absent.pem") && err.contains("--tls-cert"),
            "{err}"
        );

        let empty = tmp.path().join("empty.pem");
        fs::write(&empty, "").unwrap();
        let err = err_text(CertFiles::load(&empty, &key));
        assert!(
            err.contains("no certificate found in") && err.contains("empty.pem"),
            "{err}"
        );
        // The certificate file holds no key.
        let err = err_text(CertFiles::load(&cert, &cert));
        assert!(err.contains("no private key found in"), "{err}");
    }

    #[test]
    fn reload_swaps_the_pair_and_a_failed_one_keeps_it() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed(a.path()).unwrap();
        let (new_cert, new_key) = self_signed(b.path()).unwrap();
        let files = CertFiles::load(&cert, &key).unwrap();
        let served = || files.current.read().unwrap().cert[0].clone();
        let old = served();

        fs::copy(&new_cert, &cert).unwrap();
        fs::copy(&new_key, &key).unwrap();
        files.reload().unwrap();
        let renewed = served();
        assert_ne!(renewed, old);
        assert_eq!(renewed, read_certs(&new_cert, "--tls-cert").unwrap()[0]);

        // A renewal caught half-written: the certificate file is still empty.
        fs::write(&cert, "").unwrap();
        let err = err_text(files.reload());
        assert!(err.contains("no certificate found in"), "{err}");
        assert_eq!(served(), renewed);
    }

    #[tokio::test]
    async fn handshake_with_a_client_trusting_the_certificate() {
        let tmp = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed(tmp.path()).unwrap();
        let acceptor = CertFiles::load(&cert, &key).unwrap().acceptor().unwrap();

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.unwrap();
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await.unwrap();
            tls.write_all(b"pong").await.unwrap();
            tls.shutdown().await.unwrap();
            buf
        });

        let mut roots = rustls::RootCertStore::empty();
        for c in read_certs(&cert, "--ca").unwrap() {
            roots.add(c).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        tls.write_all(b"ping").await.unwrap();
        let mut reply = Vec::new();
        tls.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"pong");
        assert_eq!(&server.await.unwrap(), b"ping");
    }
}
