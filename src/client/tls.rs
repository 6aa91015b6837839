//! TLS settings for the client: trust a given certificate file, or (on
//! request only) trust anything.
//!
//! There is no default trust store: the machines chatd runs on may have none,
//! and a self-hosted server usually presents its own self-signed certificate.
//! The caller says which certificate to trust.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::server::tls::read_certs;

/// A client configuration that trusts the certificates in the PEM file `ca`:
/// a CA's, or the server's own self-signed one (chatd's generated
/// `tls/cert.pem`).
pub fn trusting(ca: &Path) -> anyhow::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(ca, "--ca")? {
        roots
            .add(cert)
            .with_context(|| format!("cannot trust a certificate of {}", ca.display()))?;
    }
    let config = builder(provider())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(finish(config))
}

/// A client configuration that accepts ANY server certificate: the
/// connection is encrypted but not authenticated, so anyone on the path can
/// read and change it. For trying things out (`chatd chat --insecure`) only.
pub fn insecure() -> anyhow::Result<Arc<ClientConfig>> {
    let provider = provider();
    let config = builder(provider.clone())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCertificate(provider)))
        .with_no_client_auth();
    Ok(finish(config))
}

/// The ring provider, as the server uses: explicit, so no process-wide
/// default has to be installed.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn builder(
    provider: Arc<CryptoProvider>,
) -> anyhow::Result<rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>> {
    ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("the TLS provider supports no safe protocol version")
}

/// Offers `http/1.1` over ALPN: the websocket upgrade is an HTTP/1 request.
fn finish(mut config: ClientConfig) -> Arc<ClientConfig> {
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A certificate verifier that accepts every certificate for every name.
///
/// Handshake signatures are still checked against the presented certificate
/// (that keeps the handshake well-formed), but since the certificate itself
/// is never checked, this proves nothing about who the server is.
#[derive(Debug)]
struct AcceptAnyServerCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
