//! The TLS client configuration of everything that calls a Flotilla server: the agent and
//! the `flotilla` client commands.
//!
//! Design decisions:
//! * rustls with the aws-lc-rs provider, passed explicitly: it is the provider the AWS SDK
//!   already compiles, so there is no second crypto library (no `ring`) and no reliance on a
//!   process-wide default provider. reqwest gets the finished configuration
//!   (`use_preconfigured_tls`), so it never picks a provider of its own.
//! * Trust = the system's roots (`rustls-native-certs`, which honours `SSL_CERT_FILE` and
//!   `SSL_CERT_DIR`) plus, when given, the certificates of one PEM file (`--ca-cert`), for
//!   servers with a private CA or a self-signed certificate. There is no way to turn
//!   verification off: a certificate that does not verify is an error.
//! * [`certificate_error`] recognizes a verification failure in an error chain, so callers
//!   can stop with a clear message instead of retrying what cannot succeed.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

/// Every certificate of a PEM file; errors name the file.
pub fn load_certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path)
        .with_context(|| format!("reading the CA certificate {}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| {
            anyhow::anyhow!(
                "{} is not a valid PEM certificate file: {error}",
                path.display()
            )
        })?;
    if certs.is_empty() {
        bail!("{} holds no PEM certificate", path.display());
    }
    Ok(certs)
}

/// A client configuration trusting the system's roots and the certificates in `ca_cert`.
pub fn client_config(ca_cert: Option<&Path>) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::debug!(%error, "skipping unreadable system certificates");
    }
    let (_, ignored) = roots.add_parsable_certificates(native.certs);
    if ignored > 0 {
        tracing::debug!(ignored, "skipping unparsable system certificates");
    }
    if let Some(path) = ca_cert {
        for cert in load_certificates(path)? {
            roots.add(cert).with_context(|| {
                format!("{} holds a certificate rustls cannot trust", path.display())
            })?;
        }
    }
    if roots.is_empty() {
        // Fine for plain http; an https server then fails verification, which says so.
        tracing::debug!("no trusted root certificates (system or --ca-cert)");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("configuring TLS versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The certificate verification failure in `error`'s chain, if that is what it is.
pub fn certificate_error(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(rustls::Error::InvalidCertificate(reason)) =
            error.downcast_ref::<rustls::Error>()
        {
            return Some(format!("{reason:?}"));
        }
        if let Some(io) = error.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(found) = certificate_error(inner)
        {
            return Some(found);
        }
        current = error.source();
    }
    None
}
