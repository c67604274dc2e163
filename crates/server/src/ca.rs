//! Flotilla's certificate authority for client bundles (issue #15), and the bundle's zip.
//!
//! A client bundle is a key, a certificate naming its user and the CA certificate, which
//! the user's own `docker` CLI presents to a swarm manager's Docker API proxy (the agent's
//! `proxy` module); the proxy trusts exactly this CA, with a certificate of its own that
//! the same CA issues for the manager's addresses.
//!
//! Design decisions:
//! * **rcgen, no hand-written crypto.** Keys are ECDSA P-256 (what the Docker CLI and rustls
//!   both handle); the CA is created on first use and its key is kept only sealed
//!   (`secrets::BUNDLE_CA`, like linked AWS keys), its certificate in clear.
//! * **The CA's issuer is rebuilt from code and key**, not parsed from its certificate: its
//!   name and key usages are constants here, and the authority key identifier is derived
//!   from the key, so certificates issued after a restart chain to the same CA certificate.
//! * **A bundle is known by its certificate's SHA-256 fingerprint**, recorded with its
//!   random 127-bit serial (the bundle's id). The proxy sends the fingerprint of the
//!   certificate a connection presents; the server answers from that record (revoked or
//!   not, whose, which role), so no certificate parser is needed anywhere.
//! * **A proxy's private key never leaves its node**: the agent sends only the public key
//!   (a P-256 point), and the server certifies it for the node's addresses. A bundle's key,
//!   on the other hand, is generated here (UCP's layout carries it) and exists only in the
//!   zip of the answer that creates it.
//! * The zip is stored (not compressed): it is a few kilobytes, and the `zip` crate then
//!   needs no compression library.

use std::io::Write as _;

use anyhow::{Context as _, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SerialNumber, SignatureAlgorithm,
};
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;

/// How long the CA certificate is valid.
const CA_DAYS: i64 = 3650;
/// How long a bundle's certificate is valid.
pub const BUNDLE_DAYS: i64 = 365;
/// How long a proxy's certificate is valid (the agent asks for a new one when it starts
/// serving, so a restart renews it).
const PROXY_DAYS: i64 = 365;
/// Slack for clocks behind ours.
const BACKDATE_SECONDS: i64 = 3600;

/// The CA's name (constant: the issuer of every certificate is rebuilt from it).
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Flotilla");
    name.push(DnType::CommonName, "Flotilla client bundle CA");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn at(unix: i64) -> anyhow::Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(unix).context("a time out of range")
}

/// A fresh random serial: 16 bytes, positive, with a fixed length in hex.
fn new_serial() -> (SerialNumber, String) {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    (SerialNumber::from_slice(&bytes), hex::encode(bytes))
}

/// Hex SHA-256 of a certificate's DER: how a bundle is found from a connection.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// Flotilla's CA, loaded: its certificate and its key.
pub struct Ca {
    cert_pem: String,
    key: KeyPair,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ca(..)")
    }
}

/// A new bundle's certificate, key and record.
pub struct IssuedBundle {
    /// The serial, hex: the bundle's id.
    pub id: String,
    pub fingerprint: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub public_key_pem: String,
    pub not_after: i64,
}

impl std::fmt::Debug for IssuedBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedBundle")
            .field("id", &self.id)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// A P-256 public key the agent sent (an uncompressed point).
struct ProxyPublicKey(Vec<u8>);

impl PublicKeyData for ProxyPublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl Ca {
    /// A new CA: (certificate PEM, key PEM). The key is for sealing at once.
    pub fn generate(now: i64) -> anyhow::Result<(String, String)> {
        let key = KeyPair::generate().context("generating the CA key")?;
        let mut params = ca_params();
        params.not_before = at(now - BACKDATE_SECONDS)?;
        params.not_after = at(now + CA_DAYS * 86_400)?;
        params.serial_number = Some(new_serial().0);
        let cert = params
            .self_signed(&key)
            .context("signing the CA certificate")?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    pub fn load(cert_pem: &str, key_pem: &str) -> anyhow::Result<Ca> {
        let key = KeyPair::from_pem(key_pem).context("the stored CA key is not readable")?;
        Ok(Ca {
            cert_pem: cert_pem.to_owned(),
            key,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    fn issuer(&self) -> Issuer<'static, &KeyPair> {
        Issuer::new(ca_params(), &self.key)
    }

    /// A client certificate for `username` (CN = the user), with a new key.
    pub fn issue_bundle(&self, username: &str, now: i64) -> anyhow::Result<IssuedBundle> {
        let key = KeyPair::generate().context("generating the bundle's key")?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "Flotilla");
        name.push(DnType::CommonName, username);
        params.distinguished_name = name;
        let (serial, id) = new_serial();
        params.serial_number = Some(serial);
        params.not_before = at(now - BACKDATE_SECONDS)?;
        let not_after = now + BUNDLE_DAYS * 86_400;
        params.not_after = at(not_after)?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer())
            .context("signing the bundle's certificate")?;
        Ok(IssuedBundle {
            id,
            fingerprint: fingerprint(cert.der()),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            public_key_pem: key.public_key_pem(),
            not_after,
        })
    }

    /// A server certificate for a manager's proxy: its public key (`public_key`, an
    /// uncompressed P-256 point) certified for `names` (IP addresses and DNS names).
    pub fn issue_proxy(
        &self,
        public_key: &[u8],
        names: &[String],
        now: i64,
    ) -> anyhow::Result<String> {
        if public_key.len() != 65 || public_key[0] != 4 {
            bail!("public_key: not an uncompressed P-256 point (65 bytes starting with 4)");
        }
        let mut params = CertificateParams::new(names.to_vec())
            .context("a node address that cannot be a certificate name")?;
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "Flotilla");
        name.push(DnType::CommonName, "Flotilla Docker API proxy");
        params.distinguished_name = name;
        params.serial_number = Some(new_serial().0);
        params.not_before = at(now - BACKDATE_SECONDS)?;
        params.not_after = at(now + PROXY_DAYS * 86_400)?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&ProxyPublicKey(public_key.to_vec()), &self.issuer())
            .context("signing the proxy's certificate")?;
        Ok(cert.pem())
    }
}

/// The scripts of UCP's layout: `env.sh` (`eval "$(<env.sh)"` or `source env.sh` in the
/// bundle's directory), `env.ps1` and `env.cmd`. Without a host they set TLS only.
pub fn env_scripts(docker_host: Option<&str>) -> (String, String, String) {
    let mut sh = String::from(
        "export DOCKER_TLS_VERIFY=1\nexport COMPOSE_TLS_VERSION=TLSv1_2\nexport DOCKER_CERT_PATH=\"$(pwd)\"\n",
    );
    let mut ps1 = String::from(
        "$env:DOCKER_TLS_VERIFY=1\n$env:COMPOSE_TLS_VERSION=\"TLSv1_2\"\n$env:DOCKER_CERT_PATH=$(Split-Path $script:MyInvocation.MyCommand.Path)\n",
    );
    let mut cmd = String::from(
        "@echo off\r\nset DOCKER_TLS_VERIFY=1\r\nset COMPOSE_TLS_VERSION=TLSv1_2\r\nset DOCKER_CERT_PATH=%~dp0\r\n",
    );
    match docker_host {
        Some(host) => {
            sh.push_str(&format!("export DOCKER_HOST={host}\n"));
            ps1.push_str(&format!("$env:DOCKER_HOST=\"{host}\"\n"));
            cmd.push_str(&format!("set DOCKER_HOST={host}\r\n"));
        }
        None => sh.push_str(
            "# No swarm was chosen: set DOCKER_HOST=tcp://<a manager's address>:2376 yourself,\n# or create the bundle with --swarm.\n",
        ),
    }
    (sh, ps1, cmd)
}

/// The bundle's zip: UCP's client-bundle layout.
pub fn bundle_zip(
    issued: &IssuedBundle,
    ca_pem: &str,
    docker_host: Option<&str>,
) -> anyhow::Result<Vec<u8>> {
    let (sh, ps1, cmd) = env_scripts(docker_host);
    let files: [(&str, &str, u32); 7] = [
        ("ca.pem", ca_pem, 0o644),
        ("cert.pem", &issued.cert_pem, 0o644),
        ("key.pem", &issued.key_pem, 0o600),
        ("cert.pub", &issued.public_key_pem, 0o644),
        ("env.sh", &sh, 0o644),
        ("env.ps1", &ps1, 0o644),
        ("env.cmd", &cmd, 0o644),
    ];
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, text, mode) in files {
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .unix_permissions(mode);
        zip.start_file(name, options)
            .and_then(|()| zip.write_all(text.as_bytes()).map_err(Into::into))
            .with_context(|| format!("writing {name} into the bundle"))?;
    }
    Ok(zip.finish().context("finishing the bundle")?.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_chain_to_the_ca_after_a_reload() {
        let now = 1_800_000_000;
        let (ca_pem, key_pem) = Ca::generate(now).expect("ca");
        // A reloaded CA (a restarted server) issues for the same CA certificate.
        let ca = Ca::load(&ca_pem, &key_pem).expect("load");
        let issued = ca.issue_bundle("alice", now).expect("bundle");
        assert_eq!(issued.id.len(), 32);
        assert_ne!(
            issued.id,
            ca.issue_bundle("alice", now).expect("second").id,
            "serials are random"
        );
        let proxy_key = KeyPair::generate().expect("key");
        let proxy = ca
            .issue_proxy(
                proxy_key.public_key_raw(),
                &["10.0.1.5".into(), "node.example".into()],
                now,
            )
            .expect("proxy");
        assert!(proxy.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(
            ca.issue_proxy(b"short", &[], now)
                .expect_err("not a point")
                .to_string()
                .contains("public_key")
        );
        // rustls accepts the bundle's certificate as a client of a server trusting the CA.
        use rustls::pki_types::pem::PemObject as _;
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("pem"))
            .expect("root");
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            provider,
        )
        .build()
        .expect("verifier");
        let client = rustls::pki_types::CertificateDer::from_pem_slice(issued.cert_pem.as_bytes())
            .expect("client pem");
        let when = rustls::pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            u64::try_from(now).expect("positive"),
        ));
        verifier
            .verify_client_cert(&client, &[], when)
            .expect("the bundle verifies against the CA");
        assert_eq!(fingerprint(client.as_ref()), issued.fingerprint);
    }

    #[test]
    fn the_zip_has_ucps_layout_and_env_sh_points_at_the_host() {
        let (ca_pem, key_pem) = Ca::generate(1_800_000_000).expect("ca");
        let ca = Ca::load(&ca_pem, &key_pem).expect("load");
        let issued = ca.issue_bundle("bob", 1_800_000_000).expect("bundle");
        let bytes = bundle_zip(&issued, &ca_pem, Some("tcp://10.0.1.5:2376")).expect("zip");
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).expect("archive");
        let mut names: Vec<String> = archive
            .file_names()
            .map(|name| name.expect("a name").into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "ca.pem", "cert.pem", "cert.pub", "env.cmd", "env.ps1", "env.sh", "key.pem"
            ]
        );
        let mut env = String::new();
        std::io::Read::read_to_string(&mut archive.by_name("env.sh").expect("env.sh"), &mut env)
            .expect("read");
        assert!(
            env.contains("export DOCKER_HOST=tcp://10.0.1.5:2376\n"),
            "{env}"
        );
        assert!(env.contains("export DOCKER_TLS_VERIFY=1\n"), "{env}");
        assert!(
            env.contains("export DOCKER_CERT_PATH=\"$(pwd)\"\n"),
            "{env}"
        );
        let key = archive.by_name("key.pem").expect("key.pem");
        assert_eq!(key.unix_mode().map(|m| m & 0o777), Some(0o600));
        let (sh, _, _) = env_scripts(None);
        assert!(!sh.contains("export DOCKER_HOST"), "{sh}");
    }
}
