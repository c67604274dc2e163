//! The client side of the Docker Cloud API v1: what `flotilla nodecluster|node|action …` use.
//!
//! Configuration follows the original CLI so existing scripts keep working: the host, user
//! and API key come from `FLOTILLA_HOST`, `FLOTILLA_USER`, `FLOTILLA_APIKEY`, or else
//! `DOCKERCLOUD_REST_HOST`, `DOCKERCLOUD_USER`, `DOCKERCLOUD_APIKEY`. Objects are handled as
//! JSON values: the commands print what the server sends and read only the fields they show,
//! so a field added to the API never breaks an older client.
//!
//! An `https` host is verified against the system's roots (which honour `SSL_CERT_FILE` and
//! `SSL_CERT_DIR`) plus the PEM certificates of `FLOTILLA_CA_CERT` when set, as for the
//! agent ([`flotilla_agent::tls`]); verification cannot be turned off.

pub mod access;
pub mod bundle;
pub mod commands;
pub mod provider;
pub mod swarm;

use anyhow::{Context, anyhow, bail};
use reqwest::Method;
use serde_json::Value;

/// A configured connection to a Flotilla server: the typed client
/// ([`flotilla_api::Client`]) with the CLI's configuration and error messages.
#[derive(Debug, Clone)]
pub struct ApiClient {
    pub api: flotilla_api::Client,
}

/// A successful answer: the body and the action the call started, if any.
#[derive(Debug)]
pub struct Answer {
    pub body: Value,
    pub action_uri: Option<String>,
}

fn first_env(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
}

impl ApiClient {
    pub fn from_env(host: Option<String>) -> anyhow::Result<ApiClient> {
        let base = host
            .or_else(|| first_env(&["FLOTILLA_HOST", "DOCKERCLOUD_REST_HOST"]))
            .unwrap_or_else(|| "http://127.0.0.1:8000".to_owned());
        let user = first_env(&["FLOTILLA_USER", "DOCKERCLOUD_USER"])
            .context("set FLOTILLA_USER (or DOCKERCLOUD_USER) to your user name")?;
        let api_key = first_env(&["FLOTILLA_APIKEY", "DOCKERCLOUD_APIKEY"])
            .context("set FLOTILLA_APIKEY (or DOCKERCLOUD_APIKEY) to your API key")?;
        let ca_cert = first_env(&["FLOTILLA_CA_CERT"]).map(std::path::PathBuf::from);
        let http = reqwest::Client::builder()
            .user_agent(concat!("flotilla-cli/", env!("CARGO_PKG_VERSION")))
            .timeout(std::time::Duration::from_secs(60))
            .use_preconfigured_tls(flotilla_agent::tls::client_config(ca_cert.as_deref())?)
            .build()
            .context("building the HTTP client")?;
        Ok(ApiClient {
            api: flotilla_api::Client::new(base, user, api_key, http),
        })
    }

    pub fn base(&self) -> &str {
        self.api.base()
    }

    /// Sends a request to `path` (built by [`flotilla_api::uri`]) and returns the JSON
    /// answer; a refusal is an error with the server's message.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Answer> {
        match self.api.call(method, path, body).await {
            Ok(reply) => Ok(Answer {
                body: reply.body,
                action_uri: reply.action_uri,
            }),
            Err(error) => Err(self.explain(error)),
        }
    }

    /// The CLI's words for a failed call.
    fn explain(&self, error: flotilla_api::client::Error) -> anyhow::Error {
        use flotilla_api::client::Error;
        match &error {
            Error::Transport { .. } => match flotilla_agent::tls::certificate_error(&error) {
                Some(reason) => anyhow!(
                    "the TLS certificate of {} is not trusted ({reason}); set FLOTILLA_CA_CERT to the CA that signed it",
                    self.base()
                ),
                None => error.into(),
            },
            Error::Unauthorized { .. } => {
                anyhow!("not authorized: check FLOTILLA_USER and FLOTILLA_APIKEY")
            }
            Error::Refused { .. } | Error::Decode { .. } => error.into(),
        }
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self.call(Method::GET, path, None).await?.body)
    }

    /// Every object of a list, following `meta.next`.
    pub async fn list(&self, path: &str) -> anyhow::Result<Vec<Value>> {
        self.api.list(path).await.map_err(|e| self.explain(e))
    }

    /// Finds one object by full uuid, uuid prefix or (where `by_name`) name, like the
    /// original CLI: an ambiguous prefix is an error that says so.
    pub async fn find(
        &self,
        collection: &str,
        what: &str,
        identifier: &str,
        by_name: bool,
    ) -> anyhow::Result<Value> {
        if flotilla_api::uri::is_uuid4(identifier) {
            return self
                .get(&format!("{collection}{identifier}/"))
                .await
                .with_context(|| {
                    format!("cannot find a {what} with the identifier '{identifier}'")
                });
        }
        let mut matches = self
            .list(&format!(
                "{collection}?uuid__startswith={}",
                encode(identifier)
            ))
            .await?;
        if matches.is_empty() && by_name {
            matches = self
                .list(&format!("{collection}?name={}", encode(identifier)))
                .await?;
        }
        match matches.len() {
            0 => bail!("cannot find a {what} with the identifier '{identifier}'"),
            1 => Ok(matches.remove(0)),
            n => bail!("{n} {what}s match '{identifier}'; use the long uuid"),
        }
    }
}

use flotilla_api::client::encode;
