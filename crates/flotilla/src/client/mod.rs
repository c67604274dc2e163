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

pub mod commands;
pub mod provider;

use anyhow::{Context, bail};
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// A configured connection to a Flotilla server.
#[derive(Debug, Clone)]
pub struct ApiClient {
    base: String,
    user: String,
    api_key: String,
    http: reqwest::Client,
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
            base: base.trim_end_matches('/').to_owned(),
            user,
            api_key,
            http,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends a request to `path` (which starts with `/api/`) and returns the JSON answer.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Answer> {
        let url = format!("{}{path}", self.base);
        let mut request = self
            .http
            .request(method.clone(), &url)
            .basic_auth(&self.user, Some(&self.api_key))
            .header("Content-Type", "application/json");
        if let Some(body) = body {
            request = request.body(body.to_string());
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) => {
                if let Some(reason) = flotilla_agent::tls::certificate_error(&error) {
                    bail!(
                        "the TLS certificate of {} is not trusted ({reason}); set FLOTILLA_CA_CERT to the CA that signed it",
                        self.base
                    );
                }
                return Err(error)
                    .with_context(|| format!("cannot reach {} ({method} {path})", self.base));
            }
        };
        let status = response.status();
        let action_uri = response
            .headers()
            .get("X-DockerCloud-Action-URI")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = response.text().await.unwrap_or_default();
        if status == StatusCode::UNAUTHORIZED {
            bail!("not authorized: check FLOTILLA_USER and FLOTILLA_APIKEY");
        }
        if !status.is_success() {
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or(text);
            bail!("{message} ({} {method} {path})", status.as_u16());
        }
        let body = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)?
        };
        Ok(Answer { body, action_uri })
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self.call(Method::GET, path, None).await?.body)
    }

    /// Every object of a list, following `meta.next`.
    pub async fn list(&self, path: &str) -> anyhow::Result<Vec<Value>> {
        let mut objects = Vec::new();
        let mut next = Some(path.to_owned());
        while let Some(page) = next {
            let body = self.get(&page).await?;
            if let Some(items) = body.get("objects").and_then(Value::as_array) {
                objects.extend(items.iter().cloned());
            }
            next = body
                .pointer("/meta/next")
                .and_then(Value::as_str)
                .map(str::to_owned);
        }
        Ok(objects)
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

/// Percent-encodes a query value.
fn encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}
