//! The LDAP / Active Directory client (issue #15, part 2): finds a user with the ordered
//! searches, checks a password by binding as the user, reads a group's members. It decides
//! nothing — which users to disable and which memberships to change is
//! `flotilla_core::plan::directory`'s, when a sign-in succeeds is `app::directory`'s.
//!
//! Design decisions:
//! * **ldap3**, a maintained pure-Rust client, over rustls with the aws-lc-rs provider (the
//!   one TLS stack of the project). `ldaps://` or StartTLS on `ldap://`, verified against the
//!   configured CA (PEM) or, without one, the system's roots; plain `ldap://` only when the
//!   settings say `tls: none` (a test directory on loopback, say) — never as a fallback.
//! * **Search, then bind as the user** (UCP's way): a connection bound as the service
//!   account runs the searches in order, each `(&<filter>(<username attribute>=<name>))`
//!   with the name escaped (RFC 4515), the first that finds exactly one entry wins; then a
//!   fresh connection binds as that entry's DN with the password. An empty password is
//!   refused before any bind: LDAP treats it as an anonymous bind, which "succeeds".
//! * **Unknown users cost the same.** When no search finds the name, [`Directory::bind`] is
//!   still made, as a DN that cannot exist under the first search's base, so a wrong name
//!   and a wrong password take the same round trips and both end in "invalid credentials".
//! * Every operation has a timeout ([`TIMEOUT`]); a directory that does not answer is an
//!   error, which sign-in reports as 503 for directory users and ignores for local ones.
//! * The bind password lives only in memory here; `Debug` never shows it.

use std::sync::Arc;
use std::time::Duration;

use ldap3::{LdapConnAsync, LdapConnSettings, Scope, SearchEntry};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

/// Per connection, bind and search.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// How a server is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    /// `ldaps://`: TLS from the first byte.
    Ldaps,
    /// `ldap://` upgraded with StartTLS before anything is sent.
    StartTls,
    /// Plain `ldap://` (only when configured so).
    None,
}

impl Tls {
    pub fn parse(text: &str) -> Option<Tls> {
        match text {
            "ldaps" => Some(Tls::Ldaps),
            "starttls" => Some(Tls::StartTls),
            "none" => Some(Tls::None),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Tls::Ldaps => "ldaps",
            Tls::StartTls => "starttls",
            Tls::None => "none",
        }
    }
}

/// One directory server.
#[derive(Clone)]
pub struct Server {
    pub url: String,
    pub tls: Tls,
    pub ca_pem: Option<String>,
    pub bind_dn: String,
    pub bind_password: String,
    pub domain: Option<String>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("url", &self.url)
            .field("tls", &self.tls)
            .field("bind_dn", &self.bind_dn)
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

/// One user search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Search {
    pub base_dn: String,
    /// `base`, `one` or `sub`.
    pub scope: String,
    pub filter: String,
    pub username_attribute: String,
    pub full_name_attribute: Option<String>,
}

/// A user a search found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub dn: String,
    pub full_name: Option<String>,
}

/// A directory failure (unreachable, TLS, a refused service bind, a bad filter).
#[derive(Debug, thiserror::Error)]
#[error("LDAP server {url}: {message}")]
pub struct LdapError {
    pub url: String,
    pub message: String,
}

fn scope(text: &str) -> Scope {
    match text {
        "base" => Scope::Base,
        "one" => Scope::OneLevel,
        _ => Scope::Subtree,
    }
}

/// Checks a PEM CA bundle: at least one certificate.
pub fn check_ca(pem: &str) -> Result<(), String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate in the PEM".into());
    }
    Ok(())
}

impl Server {
    fn error(&self, message: impl std::fmt::Display) -> LdapError {
        LdapError {
            url: self.url.clone(),
            message: message.to_string(),
        }
    }

    fn tls_config(&self) -> Result<Arc<rustls::ClientConfig>, LdapError> {
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca_pem {
            Some(pem) => {
                for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                    let cert = cert.map_err(|e| self.error(format!("ca_pem: {e}")))?;
                    roots
                        .add(cert)
                        .map_err(|e| self.error(format!("ca_pem: {e}")))?;
                }
            }
            None => {
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
            }
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| self.error(e))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }

    /// A connection, not yet bound.
    async fn connect(&self) -> Result<ldap3::Ldap, LdapError> {
        let mut settings = LdapConnSettings::new().set_conn_timeout(TIMEOUT);
        if self.tls != Tls::None {
            settings = settings
                .set_config(self.tls_config()?)
                .set_starttls(self.tls == Tls::StartTls);
        }
        let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &self.url)
            .await
            .map_err(|e| self.error(e))?;
        ldap3::drive!(conn);
        ldap.with_timeout(TIMEOUT);
        Ok(ldap)
    }

    /// A connection bound as the service account.
    async fn service(&self) -> Result<ldap3::Ldap, LdapError> {
        let mut ldap = self.connect().await?;
        ldap.with_timeout(TIMEOUT);
        ldap.simple_bind(&self.bind_dn, &self.bind_password)
            .await
            .and_then(|r| r.success())
            .map_err(|e| self.error(format!("bind as {}: {e}", self.bind_dn)))?;
        Ok(ldap)
    }

    /// The user `name` as the first search that finds exactly one entry finds it.
    pub async fn find(&self, searches: &[Search], name: &str) -> Result<Option<Found>, LdapError> {
        let mut ldap = self.service().await?;
        let escaped = ldap3::ldap_escape(name);
        let mut found = None;
        for search in searches {
            let filter = format!(
                "(&{}({}={escaped}))",
                wrap(&search.filter),
                search.username_attribute
            );
            let mut attributes = vec![search.username_attribute.as_str()];
            if let Some(full) = &search.full_name_attribute {
                attributes.push(full);
            }
            ldap.with_timeout(TIMEOUT);
            let (entries, _) = ldap
                .search(&search.base_dn, scope(&search.scope), &filter, attributes)
                .await
                .and_then(|r| r.success())
                .map_err(|e| self.error(format!("search {} {filter}: {e}", search.base_dn)))?;
            if let [entry] = entries.as_slice() {
                let entry = SearchEntry::construct(entry.clone());
                let full_name = search
                    .full_name_attribute
                    .as_ref()
                    .and_then(|a| entry.attrs.get(a))
                    .and_then(|v| v.first().cloned());
                found = Some(Found {
                    dn: entry.dn,
                    full_name,
                });
                break;
            }
        }
        let _ = ldap.unbind().await;
        Ok(found)
    }

    /// Whether `password` is `dn`'s: a bind as `dn` on a fresh connection.
    pub async fn bind(&self, dn: &str, password: &str) -> Result<bool, LdapError> {
        if password.is_empty() {
            return Ok(false);
        }
        let mut ldap = self.connect().await?;
        let result = ldap
            .simple_bind(dn, password)
            .await
            .map_err(|e| self.error(e))?;
        let _ = ldap.unbind().await;
        match result.rc {
            0 => Ok(true),
            // invalidCredentials, and an entry the server will not bind (unwillingToPerform).
            49 | 53 => Ok(false),
            rc => Err(self.error(format!("bind: result code {rc}: {}", result.text))),
        }
    }

    /// The member DNs of group `dn` (`member` and `uniqueMember`); `None`: no such group.
    pub async fn group_members(&self, dn: &str) -> Result<Option<Vec<String>>, LdapError> {
        let mut ldap = self.service().await?;
        let answer = ldap
            .search(
                dn,
                Scope::Base,
                "(objectClass=*)",
                vec!["member", "uniqueMember"],
            )
            .await
            .map_err(|e| self.error(e))?;
        let _ = ldap.unbind().await;
        // noSuchObject: the group was deleted; it grants nobody.
        if answer.1.rc == 32 {
            return Ok(None);
        }
        let (entries, _) = answer
            .success()
            .map_err(|e| self.error(format!("group {dn}: {e}")))?;
        Ok(entries.into_iter().next().map(|entry| {
            let entry = SearchEntry::construct(entry);
            entry
                .attrs
                .iter()
                .filter(|(k, _)| {
                    k.eq_ignore_ascii_case("member") || k.eq_ignore_ascii_case("uniqueMember")
                })
                .flat_map(|(_, v)| v.iter().cloned())
                .collect()
        }))
    }
}

/// A filter in parentheses (`objectClass=person` → `(objectClass=person)`).
fn wrap(filter: &str) -> String {
    let filter = filter.trim();
    if filter.starts_with('(') {
        filter.to_owned()
    } else {
        format!("({filter})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_wrapped_and_tls_modes_parse() {
        assert_eq!(wrap("objectClass=person"), "(objectClass=person)");
        assert_eq!(wrap(" (&(a=b)(c=d)) "), "(&(a=b)(c=d))");
        for mode in [Tls::Ldaps, Tls::StartTls, Tls::None] {
            assert_eq!(Tls::parse(mode.as_str()), Some(mode));
        }
        assert_eq!(Tls::parse("ssl"), None);
        assert!(check_ca("not a pem").is_err());
    }

    #[test]
    fn the_bind_password_is_not_in_debug() {
        let server = Server {
            url: "ldaps://x".into(),
            tls: Tls::Ldaps,
            ca_pem: None,
            bind_dn: "cn=admin".into(),
            bind_password: "hunter2-secret".into(),
            domain: None,
        };
        assert!(!format!("{server:?}").contains("hunter2"));
    }
}
