//! The agent API's HTTP edge (`/api/agent/v1/node/…`): how a node's `flotilla agent`
//! registers, reports and sends heartbeats, plus `GET /download/flotilla`, the binary the
//! bootstrap fetches. What these requests do — registration, credentials, heartbeats, health
//! verdicts — is the agent channel's application part, [`crate::app::agents`].
//!
//! Design decisions:
//! * **Heartbeats are short requests on a kept-alive connection**, not a protocol of their
//!   own: `POST …/ping/` every interval (10 s) over the agent's HTTP/1.1 keep-alive
//!   connection costs one small request and no handshake, stays inside the one HTTP stack
//!   (auth, TLS, limits), and needs no per-connection state on the server beyond the socket.
//!   10,000 agents make 1,000 requests a second.
//! * The handlers answer with the agent channel's own error type
//!   ([`crate::app::agents::AgentError`]), mapped here to `{"error": ...}` with the status
//!   the agent acts on (401: wrong token; 403: right token, wrong node or used up), and a
//!   401 names the agent's token scheme.

use axum::body::{Body, to_bytes};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use flotilla_api as api;
use flotilla_api::agent::{NodeUpdate, Registration, TOKEN_SCHEME};
use flotilla_core::cloud::Cloud;

use crate::app::App;
use crate::app::agents::{AgentError, AgentResult};
use crate::routes::{Route, allows};

/// Largest agent request body.
const MAX_AGENT_BODY: usize = 64 * 1024;

impl IntoResponse for AgentError {
    fn into_response(self) -> Response {
        let status = match &self {
            AgentError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            AgentError::Forbidden(_) => StatusCode::FORBIDDEN,
            AgentError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AgentError::NotFound(_) => StatusCode::NOT_FOUND,
            AgentError::Conflict(_) => StatusCode::CONFLICT,
            AgentError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            AgentError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            AgentError::Internal(error) => {
                tracing::error!(%error, "agent request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let mut response = (
            status,
            axum::Json(api::ErrorBody {
                error: self.to_string(),
            }),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(TOKEN_SCHEME),
            );
        }
        response
    }
}

/// The token of `Authorization: TutumAgentToken <token>`.
fn agent_token(headers: &HeaderMap) -> AgentResult<String> {
    let missing =
        || AgentError::Unauthorized(format!("send 'Authorization: {TOKEN_SCHEME} <token>'"));
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(missing)?;
    let (scheme, token) = value.trim().split_once(' ').ok_or_else(missing)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case(TOKEN_SCHEME) || token.is_empty() {
        return Err(missing());
    }
    Ok(token.to_owned())
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> AgentResult<T> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    serde_json::from_slice(bytes)
        .map_err(|e| AgentError::BadRequest(format!("the body is not a valid request: {e}")))
}

fn json<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    (status, axum::Json(body)).into_response()
}

/// Serves one agent route (see [`crate::routes::is_agent_route`]); `peer_ip` is the request's source
/// address.
pub async fn dispatch<C: Cloud + 'static>(
    app: &App<C>,
    route: Route,
    method: &Method,
    headers: &HeaderMap,
    body: Body,
    peer_ip: &str,
) -> Response {
    match handle(app, route, method, headers, body, peer_ip).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn handle<C: Cloud + 'static>(
    app: &App<C>,
    route: Route,
    method: &Method,
    headers: &HeaderMap,
    body: Body,
    peer_ip: &str,
) -> AgentResult<Response> {
    if route == Route::Download {
        if !allows(&route, method) {
            return Err(AgentError::MethodNotAllowed(method.clone()));
        }
        return download().await;
    }
    // Authentication first: an unauthenticated caller learns nothing about the route.
    let token = agent_token(headers)?;
    if !allows(&route, method) {
        return Err(AgentError::MethodNotAllowed(method.clone()));
    }
    let bytes = to_bytes(body, MAX_AGENT_BODY).await.map_err(|_| {
        AgentError::TooLarge(format!(
            "the body is larger than {MAX_AGENT_BODY} bytes or unreadable"
        ))
    })?;
    match route {
        Route::AgentNodes => {
            let registration: Registration = parse_json(&bytes)?;
            let registered = app.agent_register(&token, &registration, peer_ip).await?;
            let status = if registered.first {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(json(status, &registered.node))
        }
        Route::AgentNode(uuid) => {
            app.agent_authenticate(&token, &uuid).await?;
            if *method == Method::PATCH {
                let update: NodeUpdate = parse_json(&bytes)?;
                Ok(json(
                    StatusCode::OK,
                    &app.agent_update(&uuid, &update).await?,
                ))
            } else {
                Ok(json(StatusCode::OK, &app.agent_node(&uuid).await?))
            }
        }
        Route::AgentNodeDockerProxy(uuid) => {
            app.agent_authenticate(&token, &uuid).await?;
            let request = parse_json(&bytes)?;
            Ok(json(
                StatusCode::OK,
                &app.agent_docker_proxy(&uuid, &request).await?,
            ))
        }
        Route::AgentNodeBundleCheck(uuid) => {
            app.agent_authenticate(&token, &uuid).await?;
            let check = parse_json(&bytes)?;
            Ok(json(
                StatusCode::OK,
                &app.agent_bundle_check(&uuid, &check).await?,
            ))
        }
        Route::AgentNodePing(uuid) => {
            app.agent_authenticate(&token, &uuid).await?;
            Ok(json(StatusCode::OK, &app.agent_ping(&uuid).await?))
        }
        other => Err(AgentError::NotFound(format!(
            "not an agent route: {other:?}"
        ))),
    }
}

/// `GET /download/flotilla`: this server's own executable, which nodes run as their agent.
async fn download() -> AgentResult<Response> {
    let unavailable = |error: std::io::Error| {
        tracing::error!(%error, "cannot read the server's executable");
        AgentError::NotFound("the flotilla binary is not available".into())
    };
    let path = std::env::current_exe().map_err(unavailable)?;
    let file = tokio::fs::File::open(&path).await.map_err(unavailable)?;
    let length = file.metadata().await.map_err(unavailable)?.len();
    let stream = tokio_util::io::ReaderStream::new(file);
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_scheme_is_required() {
        let mut headers = HeaderMap::new();
        assert!(matches!(
            agent_token(&headers),
            Err(AgentError::Unauthorized(_))
        ));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert!(agent_token(&headers).is_err());
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("TutumAgentToken  abc "),
        );
        assert_eq!(agent_token(&headers).expect("token"), "abc");
    }
}
