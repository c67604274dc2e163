//! Client bundles (issue #15): a user's certificates for the `docker` CLI, and the two
//! questions a swarm manager's Docker API proxy asks over the agent channel.
//!
//! Design decisions:
//! * **Bundles are personal**, like API keys: they live under `user/{name}/bundle/` and
//!   `authz` lets the user (or the server administrator) alone reach them. A bundle names
//!   only its user; what it may do on a swarm is that user's role there *at the time of
//!   each request* ([`App::agent_bundle_check`]), so a grant changed or removed applies to
//!   bundles already handed out.
//! * **The proxy asks on every request, nothing is cached** — in the agent or here. The
//!   answer is one indexed lookup of the certificate's fingerprint, the user's grants and
//!   the swarm's owner; a revoked bundle, a removed user or a withdrawn grant is therefore
//!   refused from the first request after the change was committed. An exchange already
//!   under way (an attach, `logs -f`) is not cut.
//! * `--swarm` only chooses `DOCKER_HOST` in `env.sh` (a manager of that swarm: its public
//!   address, else its private one); the caller must be able to view the swarm, or it is
//!   "not found" like any swarm it may not see.
//! * The CA is created on the first bundle or proxy request ([`App::bundle_ca`]); its key
//!   is sealed with the installation's data key, so a server without one refuses bundles.

use base64::Engine as _;
use flotilla_api::agent::{BundleCheck, BundleVerdict, DockerProxyConfig, DockerProxyRequest};
use flotilla_api::{self as api, date, uri};
use flotilla_core::cloud::Cloud;
use flotilla_core::docker_access::DOCKER_PROXY_PORT;
use flotilla_core::state::NodeState;
use serde_json::Value;

use super::agents::{AgentError, AgentResult};
use super::{App, AppError, AppResult, Caller};
use crate::ca::{self, Ca};
use crate::secrets::BUNDLE_CA;
use crate::store::SwarmRecord;
use crate::store::bundles::{BundleRecord, CaRecord};

fn render(bundle: &BundleRecord) -> api::Bundle {
    api::Bundle {
        id: bundle.id.clone(),
        username: bundle.username.clone(),
        swarm: bundle.swarm.clone(),
        fingerprint: bundle.fingerprint.clone(),
        created_datetime: date::format_unix(bundle.created_at),
        expires_datetime: date::format_unix(bundle.expires_at),
        revoked_datetime: bundle.revoked_at.map(date::format_unix),
        resource_uri: uri::bundle(&bundle.username, &bundle.id),
    }
}

fn unavailable(error: impl std::fmt::Display) -> AppError {
    AppError::Unavailable(format!("client bundles: {error}"))
}

impl<C: Cloud + 'static> App<C> {
    /// Flotilla's CA, created (and its key sealed) on first use.
    pub(crate) async fn bundle_ca(&self) -> AppResult<Ca> {
        let Some(secret_key) = &self.secret_key else {
            return Err(AppError::Unavailable(
                "this server has no key to seal its CA with".into(),
            ));
        };
        let record = match self.store.bundle_ca().await? {
            Some(record) => record,
            None => {
                let now = date::now_unix();
                let (cert_pem, key_pem) = Ca::generate(now).map_err(unavailable)?;
                let (nonce, sealed) = secret_key
                    .seal(BUNDLE_CA, key_pem.as_bytes())
                    .map_err(unavailable)?;
                let fresh = CaRecord {
                    cert_pem,
                    key_nonce: hex::encode(nonce),
                    key_sealed: hex::encode(sealed),
                };
                let stored = self.store.insert_bundle_ca(&fresh, now).await?;
                if stored == fresh {
                    tracing::info!("created Flotilla's client bundle CA");
                }
                stored
            }
        };
        let nonce = hex::decode(&record.key_nonce).map_err(unavailable)?;
        let sealed = hex::decode(&record.key_sealed).map_err(unavailable)?;
        let key_pem = secret_key
            .open(BUNDLE_CA, &nonce, &sealed)
            .map_err(|_| unavailable("the CA key does not open with this server's secret.key"))?;
        let key_pem = String::from_utf8(key_pem).map_err(unavailable)?;
        Ca::load(&record.cert_pem, &key_pem).map_err(unavailable)
    }

    /// The swarm a bundle's `env.sh` points at: by uuid or name, among those the caller
    /// may view.
    async fn bundle_swarm(&self, caller: &Caller, wanted: &str) -> AppResult<SwarmRecord> {
        let viewer = self.viewer(&caller.principal, None).await?;
        self.store
            .swarms()
            .await?
            .into_iter()
            .filter(|s| s.destroyed_at.is_none() && viewer.sees(&s.uuid))
            .find(|s| s.uuid == wanted || s.name == wanted)
            .ok_or_else(|| AppError::NotFound(format!("swarm: '{wanted}' not found")))
    }

    /// `DOCKER_HOST` for a swarm: its first deployed manager (by slot), public address
    /// first.
    async fn docker_host(&self, swarm: &SwarmRecord) -> AppResult<Option<String>> {
        let managers = self.store.nodes_of(&swarm.manager_cluster).await?;
        Ok(managers
            .iter()
            .filter(|n| n.state == NodeState::Deployed)
            .find_map(|n| n.public_ip.clone().or_else(|| n.private_ip.clone()))
            .map(|address| format!("tcp://{address}:{DOCKER_PROXY_PORT}")))
    }

    /// `POST user/{name}/bundle/` `{"swarm": uuid or name, optional}`: a new bundle, its zip
    /// shown once.
    pub async fn create_bundle(
        &self,
        caller: &Caller,
        username: &str,
        body: &Value,
    ) -> AppResult<api::BundleCreated> {
        let user = self.store.access_user(username).await?;
        if user.is_none() {
            return Err(AppError::NotFound(format!("user '{username}' not found")));
        }
        let swarm = match body.get("swarm") {
            None | Some(Value::Null) => None,
            Some(Value::String(wanted)) if !wanted.trim().is_empty() => {
                Some(self.bundle_swarm(caller, wanted.trim()).await?)
            }
            Some(_) => {
                return Err(AppError::BadRequest(
                    "swarm: a swarm's uuid or name (a string)".into(),
                ));
            }
        };
        let docker_host = match &swarm {
            Some(swarm) => self.docker_host(swarm).await?,
            None => None,
        };
        let ca = self.bundle_ca().await?;
        let now = date::now_unix();
        let issued = ca.issue_bundle(username, now).map_err(unavailable)?;
        let zip =
            ca::bundle_zip(&issued, ca.cert_pem(), docker_host.as_deref()).map_err(unavailable)?;
        let record = BundleRecord {
            id: issued.id.clone(),
            username: username.to_owned(),
            fingerprint: issued.fingerprint.clone(),
            swarm: swarm.as_ref().map(|s| s.uuid.clone()),
            created_at: now,
            expires_at: issued.not_after,
            revoked_at: None,
        };
        self.store.insert_bundle(&record).await?;
        self.record_finished(
            &Caller {
                body: String::new(),
                ..caller.clone()
            },
            &uri::user(username),
            "Bundle Create",
            &format!("client bundle {} created", record.id),
        )
        .await?;
        Ok(api::BundleCreated {
            bundle: render(&record),
            docker_host,
            zip: base64::engine::general_purpose::STANDARD.encode(zip),
        })
    }

    /// `GET user/{name}/bundle/`: the user's bundles (never a key).
    pub async fn bundles(&self, username: &str) -> AppResult<Vec<api::Bundle>> {
        if self.store.access_user(username).await?.is_none() {
            return Err(AppError::NotFound(format!("user '{username}' not found")));
        }
        Ok(self
            .store
            .bundles(username)
            .await?
            .iter()
            .map(render)
            .collect())
    }

    /// `GET user/{name}/bundle/{id}/`.
    pub async fn bundle(&self, username: &str, id: &str) -> AppResult<api::Bundle> {
        self.bundles(username)
            .await?
            .into_iter()
            .find(|b| b.id == id)
            .ok_or_else(|| {
                AppError::NotFound(format!("bundle '{id}' of user '{username}' not found"))
            })
    }

    /// `DELETE user/{name}/bundle/{id}/`: revoked; every proxy refuses it from its next
    /// request.
    pub async fn revoke_bundle(
        &self,
        caller: &Caller,
        username: &str,
        id: &str,
    ) -> AppResult<api::Bundle> {
        if !self
            .store
            .revoke_bundle(username, id, date::now_unix())
            .await?
        {
            return Err(AppError::NotFound(format!(
                "bundle '{id}' of user '{username}' not found (or already revoked)"
            )));
        }
        self.record_finished(
            &Caller {
                body: String::new(),
                ..caller.clone()
            },
            &uri::user(username),
            "Bundle Revoke",
            &format!("client bundle {id} revoked"),
        )
        .await?;
        self.bundle(username, id).await
    }

    /// The swarm whose manager `node` is; `NotFound` for any other node.
    async fn managed_swarm(&self, node: &str) -> AgentResult<SwarmRecord> {
        let not_a_manager =
            || AgentError::NotFound(format!("node {node} is not a manager of a swarm"));
        let cluster = self
            .store
            .cluster_of_node(node)
            .await?
            .ok_or_else(not_a_manager)?;
        let swarm = self
            .store
            .swarm_of_cluster(&cluster)
            .await?
            .ok_or_else(not_a_manager)?;
        if swarm.manager_cluster != cluster || swarm.destroyed_at.is_some() {
            return Err(not_a_manager());
        }
        Ok(swarm)
    }

    /// `POST agent/node/{uuid}/dockerproxy/`: the proxy's certificate, for a manager's
    /// public key and its addresses.
    pub async fn agent_docker_proxy(
        &self,
        uuid: &str,
        request: &DockerProxyRequest,
    ) -> AgentResult<DockerProxyConfig> {
        self.managed_swarm(uuid).await?;
        let public_key = base64::engine::general_purpose::STANDARD
            .decode(request.public_key.trim())
            .map_err(|_| AgentError::BadRequest("public_key: not base64".into()))?;
        let node = self
            .store
            .node(uuid)
            .await?
            .ok_or_else(|| AgentError::NotFound(format!("node {uuid} not found")))?;
        let mut names: Vec<String> = Vec::new();
        let reported = self
            .store
            .node_agent(uuid)
            .await?
            .map(|a| a.private_ips)
            .unwrap_or_default();
        for address in node
            .private_ip
            .iter()
            .chain(node.public_ip.iter())
            .chain(reported.iter())
        {
            if !address.is_empty() && !names.contains(address) {
                names.push(address.clone());
            }
        }
        let ca = self.bundle_ca().await.map_err(AgentError::from)?;
        let cert_pem = ca
            .issue_proxy(&public_key, &names, date::now_unix())
            .map_err(|error| AgentError::BadRequest(format!("{error:#}")))?;
        Ok(DockerProxyConfig {
            ca_pem: ca.cert_pem().to_owned(),
            cert_pem,
            port: DOCKER_PROXY_PORT,
        })
    }

    /// `POST agent/node/{uuid}/bundlecheck/`: who holds a certificate and their role on the
    /// node's swarm now. Refusals say why, for the proxy to pass on.
    pub async fn agent_bundle_check(
        &self,
        uuid: &str,
        check: &BundleCheck,
    ) -> AgentResult<BundleVerdict> {
        let swarm = self.managed_swarm(uuid).await?;
        let refused = |username: &str, why: String| BundleVerdict {
            username: username.to_owned(),
            role: None,
            refused: Some(why),
        };
        let Some(bundle) = self.store.bundle_by_fingerprint(&check.fingerprint).await? else {
            return Ok(refused(
                "",
                "this certificate is not a Flotilla client bundle".into(),
            ));
        };
        if let Some(revoked) = bundle.revoked_at {
            return Ok(refused(
                &bundle.username,
                format!(
                    "client bundle {} of user '{}' was revoked on {}",
                    bundle.id,
                    bundle.username,
                    date::format_unix(revoked)
                ),
            ));
        }
        let Some(principal) = self.principal(&bundle.username).await? else {
            return Ok(refused(
                &bundle.username,
                format!("user '{}' no longer exists", bundle.username),
            ));
        };
        let owner = self.store.owner(&swarm.uuid).await?;
        match principal.role_on(&swarm.uuid, owner.as_ref()) {
            Some(role) => Ok(BundleVerdict {
                username: bundle.username,
                role: Some(role),
                refused: None,
            }),
            None => Ok(refused(
                &bundle.username,
                format!(
                    "user '{}' has no role on swarm '{}'",
                    bundle.username, swarm.name
                ),
            )),
        }
    }
}
