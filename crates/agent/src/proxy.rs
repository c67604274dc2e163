//! The client bundles' Docker API proxy (issue #15): on a swarm manager, the agent listens
//! on [`flotilla_core::docker_access::DOCKER_PROXY_PORT`] with TLS, requires a client
//! certificate from Flotilla's CA, and passes each Docker engine API request the
//! certificate's user may make on to the local engine's unix socket.
//!
//! Design decisions:
//! * **It runs only while the engine is a swarm manager** (with control of the swarm, as
//!   its engine report says): [`supervise`] starts it when the worker's report says so and
//!   stops it when that ends. Starting, it makes a fresh P-256 key, sends the public half
//!   to the server (`POST …/dockerproxy/`) and gets back the CA certificate and its own
//!   certificate for the node's addresses; the key stays in memory, on this node.
//! * **Who and what role: asked of the server for every request**, over the agent's
//!   authenticated channel (`POST …/bundlecheck/` with the SHA-256 fingerprint of the
//!   certificate the TLS handshake verified). Nothing is cached, so a revoked bundle, a
//!   removed user or a changed grant applies from the next request after the server
//!   committed it. If the server cannot be asked, the request is refused (503): the proxy
//!   fails closed. A stream already passed through (an attach, `logs -f`, an exec) runs
//!   until it ends.
//! * **What the role allows is decided by `flotilla_core::docker_access::decide`**, a pure
//!   function over (role, method, path, body); the proxy only buffers the bodies it asks
//!   for (at most [`MAX_INSPECTED_BODY`]) and carries the answer out. A refusal is a 403
//!   with the engine's own error shape (`{"message": …}`), so the `docker` CLI prints it as
//!   `Error response from daemon: …`.
//! * **Everything else passes through untouched**: other bodies and every answer stream
//!   (logs, events, image pulls); a request the engine answers with `101` (attach and exec
//!   hijack the connection) becomes a byte pipe between the client and the engine.
//! * It listens on the node's private addresses (the ones the server certified), never on
//!   every interface; the node's security group opens the port only to the networks the
//!   operator asked for.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use flotilla_api::AgentClient;
use flotilla_api::agent::{BundleCheck, DockerProxyConfig, DockerProxyRequest};
use flotilla_core::docker_access::{Decision, decide, inspects_body};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest as _, Sha256};
use tokio::net::{TcpListener, UnixStream};
use tokio::sync::watch;

/// Largest body the proxy reads to decide (container and service specs are a few KiB).
pub const MAX_INSPECTED_BODY: usize = 1024 * 1024;

type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// What the proxy needs from its agent.
#[derive(Clone)]
pub struct ProxyContext {
    pub client: AgentClient,
    pub uuid: String,
    pub credential: String,
    /// The engine's unix socket.
    pub socket: PathBuf,
    /// The node's private addresses: where to listen.
    pub addresses: Vec<String>,
}

impl std::fmt::Debug for ProxyContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyContext")
            .field("uuid", &self.uuid)
            .field("socket", &self.socket)
            .field("addresses", &self.addresses)
            .finish_non_exhaustive()
    }
}

/// Whether an engine report makes this node a swarm manager the proxy should run on.
pub fn is_manager(report: &flotilla_api::agent::EngineReport) -> bool {
    report
        .engine
        .as_ref()
        .is_some_and(|e| e.swarm.state == "active" && e.swarm.control_available)
}

/// Runs the proxy while `manager` says the engine is a manager; returns when the sender is
/// gone (the session ended).
pub async fn supervise(context: ProxyContext, mut manager: watch::Receiver<bool>) {
    loop {
        if manager.wait_for(|m| *m).await.is_err() {
            return;
        }
        let serving = serve(context.clone());
        let stopped = tokio::select! {
            result = serving => Some(result),
            ended = manager.wait_for(|m| !*m) => {
                if ended.is_err() {
                    return;
                }
                None
            }
        };
        match stopped {
            Some(result) => {
                if let Err(error) = result {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        "the Docker API proxy stopped; starting it again in 5 s"
                    );
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            None => tracing::info!("no longer a swarm manager: the Docker API proxy stops"),
        }
    }
}

/// The proxy's TLS configuration: its certificate and key, and client certificates
/// required from the CA.
fn tls_config(
    config: &DockerProxyConfig,
    key_der: Vec<u8>,
) -> anyhow::Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let ca = CertificateDer::from_pem_slice(config.ca_pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("the server's CA certificate is not PEM: {e}"))?;
    let cert = CertificateDer::from_pem_slice(config.cert_pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("the proxy's certificate is not PEM: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone())?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![cert, ca],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der)),
        )?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(server)
}

/// Gets a certificate and serves until an error.
async fn serve(context: ProxyContext) -> anyhow::Result<()> {
    let key = rcgen::KeyPair::generate()?;
    let request = DockerProxyRequest {
        public_key: base64::engine::general_purpose::STANDARD.encode(key.public_key_raw()),
    };
    let config = context
        .client
        .docker_proxy(&context.uuid, &context.credential, &request)
        .await?;
    let tls = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(&config, key.serialize_der())?));
    let mut listeners = Vec::new();
    for address in &context.addresses {
        let Ok(ip) = address.parse::<IpAddr>() else {
            continue;
        };
        let listener = TcpListener::bind(SocketAddr::new(ip, config.port)).await?;
        tracing::info!(address = %listener.local_addr()?, "the Docker API proxy listens");
        listeners.push(listener);
    }
    if listeners.is_empty() {
        anyhow::bail!("no private address to listen on: {:?}", context.addresses);
    }
    let context = Arc::new(context);
    let mut accepting = tokio::task::JoinSet::new();
    for listener in listeners {
        accepting.spawn(accept(listener, tls.clone(), context.clone()));
    }
    // The first listener to fail stops the proxy (the others with it, as the set drops).
    match accepting.join_next().await {
        Some(Ok(result)) => result,
        Some(Err(error)) => Err(anyhow::anyhow!("a proxy listener panicked: {error}")),
        None => Ok(()),
    }
}

/// Accepts connections until the listener fails; each is served by a task of its own.
async fn accept(
    listener: TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    context: Arc<ProxyContext>,
) -> anyhow::Result<()> {
    loop {
        let (stream, peer) = listener.accept().await?;
        let (tls, context) = (tls.clone(), context.clone());
        tokio::spawn(async move {
            if let Err(error) = connection(stream, tls, context).await {
                tracing::debug!(%peer, error = format!("{error:#}"), "a proxy connection ended");
            }
        });
    }
}

/// One client connection: the handshake (which verifies the client's certificate), then
/// HTTP/1.1 with upgrades.
async fn connection(
    stream: tokio::net::TcpStream,
    tls: tokio_rustls::TlsAcceptor,
    context: Arc<ProxyContext>,
) -> anyhow::Result<()> {
    let stream = tls.accept(stream).await?;
    let fingerprint = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .map(|cert| hex::encode(Sha256::digest(cert.as_ref())))
        .ok_or_else(|| anyhow::anyhow!("no client certificate"))?;
    let service = hyper::service::service_fn(move |request| {
        let (context, fingerprint) = (context.clone(), fingerprint.clone());
        async move { Ok::<_, Infallible>(handle(request, &context, &fingerprint).await) }
    });
    hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await?;
    Ok(())
}

/// An answer in the engine's error shape.
fn refusal(status: StatusCode, message: String) -> Response<ProxyBody> {
    let body = serde_json::json!({ "message": message }).to_string();
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// One request: who, then whether, then pass it on.
async fn handle(
    request: Request<Incoming>,
    context: &ProxyContext,
    fingerprint: &str,
) -> Response<ProxyBody> {
    let check = BundleCheck {
        fingerprint: fingerprint.to_owned(),
    };
    let verdict = match context
        .client
        .bundle_check(&context.uuid, &context.credential, &check)
        .await
    {
        Ok(verdict) => verdict,
        Err(error) => {
            tracing::warn!(error = format!("{error:#}"), "cannot check a client bundle");
            return refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "flotilla: the Flotilla server cannot be asked about this bundle now; try again"
                    .into(),
            );
        }
    };
    let role = match (verdict.role, verdict.refused) {
        (Some(role), None) => role,
        (_, refused) => {
            let why = refused.unwrap_or_else(|| "no role on this swarm".into());
            tracing::info!(user = verdict.username, why, "a client bundle was refused");
            return refusal(StatusCode::FORBIDDEN, format!("flotilla: refused: {why}"));
        }
    };
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    let mut request = request;
    // Attach and exec ask to hijack the connection: keep the client's side of that upgrade.
    let client_side = request
        .headers()
        .contains_key(hyper::header::UPGRADE)
        .then(|| hyper::upgrade::on(&mut request));
    let (parts, body) = request.into_parts();
    let (body, inspected): (ProxyBody, Bytes) = if inspects_body(&method, &path) {
        match Limited::new(body, MAX_INSPECTED_BODY).collect().await {
            Ok(collected) => {
                let bytes = collected.to_bytes();
                (
                    Full::new(bytes.clone())
                        .map_err(|never| match never {})
                        .boxed(),
                    bytes,
                )
            }
            Err(_) => {
                return refusal(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "flotilla: the request body is larger than {MAX_INSPECTED_BODY} bytes or unreadable"
                    ),
                );
            }
        }
    } else {
        (body.boxed(), Bytes::new())
    };
    if let decision @ Decision::Deny { .. } = decide(role, &method, &path, &inspected) {
        let message = decision.message(role).unwrap_or_default();
        tracing::info!(user = verdict.username, %method, path, message, "refused");
        return refusal(StatusCode::FORBIDDEN, message);
    }
    match forward(
        &context.socket,
        Request::from_parts(parts, body),
        client_side,
    )
    .await
    {
        Ok(response) => response,
        Err(error) => {
            tracing::warn!(
                error = format!("{error:#}"),
                "the engine did not answer the proxy"
            );
            refusal(
                StatusCode::BAD_GATEWAY,
                format!("flotilla: the Docker engine did not answer: {error}"),
            )
        }
    }
}

/// Sends a request to the engine; a `101` answer joins the two upgraded connections.
async fn forward(
    socket: &std::path::Path,
    request: Request<ProxyBody>,
    client_side: Option<hyper::upgrade::OnUpgrade>,
) -> anyhow::Result<Response<ProxyBody>> {
    let stream = UnixStream::connect(socket).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, ProxyBody>(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.with_upgrades().await {
            tracing::debug!(%error, "an engine connection ended");
        }
    });
    let mut response = sender.send_request(request).await?;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_side) = client_side
    {
        let engine_side = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            match tokio::try_join!(client_side, engine_side) {
                Ok((client, engine)) => {
                    let (mut client, mut engine) = (TokioIo::new(client), TokioIo::new(engine));
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut engine).await;
                }
                Err(error) => tracing::debug!(%error, "an upgrade did not complete"),
            }
        });
    }
    Ok(response.map(|body| body.boxed()))
}
