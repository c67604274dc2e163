//! The HTTP edge's dispatcher: Docker Cloud API v1 requests, authentication, pagination and
//! filters; application errors are answered through [`crate::api_error`].
//!
//! Design decisions:
//! * Routing is one `match` over the closed [`Route`] enum of [`crate::routes`] (the route
//!   table: paths, methods, authentication, namespacing); this module dispatches and
//!   answers 405 from that table, it declares no path.
//! * Bodies are read and parsed here, so bad JSON is a 415 with `{"error": ...}` and never
//!   axum's plain-text rejection. An empty body counts as `{}`: the clients send
//!   `Content-Type: application/json` with no body on deploy and similar POSTs.
//! * Lists are filtered generically against the rendered JSON objects (Tastypie style:
//!   `field`, `field__startswith`, `field__gte`, `field__lte`; a URI field also matches its
//!   last segment), then paginated with `next`/`previous` as paths starting `/api/`.
//! * Every answer is a JSON object; errors are `{"error": "..."}` (`api_error`).
//! * Authentication comes before anything else but `/_ping`: an unauthenticated request
//!   learns nothing, not even whether its path exists (401 with `WWW-Authenticate`, not
//!   404 or 405). The agent routes use their own token (`agent_api`), and
//!   `GET /download/flotilla` is public on purpose: it is the open-source binary itself,
//!   holds no secret, and bring-your-own nodes fetch it before they hold any credential.
//!   `tests/it/security.rs` sends unauthenticated requests to every `Route` variant
//!   (`Route::iter()`), so a new route cannot be added without auth by accident.
//! * The web dashboard (`dashboard`, `session`): its page and assets are public; a valid
//!   session cookie is accepted instead of Basic on every API route, with the same user and
//!   so the same authorization, and a change made with the cookie needs the session's
//!   `X-CSRF-Token` (else 403). `POST /session` checks the key through the same throttle.
//! * Failed Basic logins are throttled ([`crate::login`]): a throttled attempt is a 429 with
//!   `Retry-After`, answered before its key is checked.
//! * Bodies are capped at 1 MiB (64 KiB on the agent routes); a larger one is a 413 with
//!   `{"error": ...}`. Bodies are read only after authentication, so an anonymous client
//!   cannot make the server buffer anything. Headers are capped by hyper (its 431 carries
//!   no JSON body: it is answered before a request exists).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use flotilla_api::{self as api, date};
use flotilla_core::cloud::Cloud;
use serde::Serialize;
use serde_json::Value;

use crate::api_error::error_response;
use crate::app::{App, AppError, AppResult, Caller, Login, Outcome, SignedInWith};
use crate::authz::Viewer;
use crate::login::{self, Client, LoginThrottle};
use crate::routes::{MAX_LIMIT, Parsed, Route, allows, is_agent_route, parse_path};
use crate::session;
use crate::store::NodeFilter;

/// The header that carries the URI of the action a call started.
pub const ACTION_URI_HEADER: &str = "X-DockerCloud-Action-URI";
/// Page size when the client does not ask for one.
pub const DEFAULT_LIMIT: u64 = 25;
/// Largest request body accepted.
const MAX_BODY: usize = 1 << 20;

/// What the dispatcher holds: the application and the edge's own state.
struct Edge<C> {
    app: Arc<App<C>>,
    /// The failed-login throttle, on the database (`crate::login`).
    logins: LoginThrottle,
    /// Whether the session cookie is `Secure` (the server is served over TLS).
    secure_cookies: bool,
}

/// The router: everything goes through one dispatcher (see the module docs).
pub fn router<C: Cloud + 'static>(app: Arc<App<C>>) -> Router {
    router_with_limits(app, crate::login::Limits::default())
}

/// [`router`] for a server served over TLS (`tls`) or not: the dashboard's session cookie
/// is `Secure` under TLS.
pub fn router_over<C: Cloud + 'static>(app: Arc<App<C>>, tls: bool) -> Router {
    edge_router(app, crate::login::Limits::default(), tls)
}

/// [`router`] with other login-throttle limits.
pub fn router_with_limits<C: Cloud + 'static>(
    app: Arc<App<C>>,
    limits: crate::login::Limits,
) -> Router {
    edge_router(app, limits, false)
}

fn edge_router<C: Cloud + 'static>(
    app: Arc<App<C>>,
    limits: crate::login::Limits,
    secure_cookies: bool,
) -> Router {
    let edge = Arc::new(Edge {
        logins: app.login_throttle(limits),
        app,
        secure_cookies,
    });
    Router::new().fallback(measured::<C>).with_state(edge)
}

/// [`dispatch`], counted and timed per route template (`crate::metrics`).
async fn measured<C: Cloud + 'static>(
    State(edge): State<Arc<Edge<C>>>,
    request: Request<Body>,
) -> Response {
    let started = Instant::now();
    let route = parse_path(request.uri().path())
        .map(|p| crate::routes::endpoint(&p.route).template)
        .unwrap_or("unknown");
    let method = request.method().clone();
    let metrics = edge.app.metrics.clone();
    let response = dispatch(State(edge), request).await;
    metrics
        .http_requests
        .with_label_values(&[route, method.as_str(), response.status().as_str()])
        .inc();
    metrics
        .http_seconds
        .with_label_values(&[route])
        .observe(started.elapsed().as_secs_f64());
    response
}

fn json_response<T: Serialize>(status: StatusCode, body: &T, action_uri: Option<&str>) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    if let Some(uri) = action_uri
        && let Ok(value) = HeaderValue::from_str(uri)
    {
        response.headers_mut().insert(ACTION_URI_HEADER, value);
    }
    response
}

fn outcome_response<T: Serialize>(outcome: &Outcome<T>, created: bool) -> Response {
    let status = if created {
        StatusCode::CREATED
    } else if outcome.accepted {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    json_response(status, &outcome.object, Some(&outcome.action_uri))
}

/// An answer that carries a secret shown once: no cache may keep it.
fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `user:secret` from `Authorization: Basic ...`.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, secret) = text.split_once(':')?;
    Some((user.to_owned(), secret.to_owned()))
}

/// The JSON body of a POST/PATCH: empty means `{}`; a non-JSON content type or bad JSON
/// is a 415, as the contract says.
fn parse_body(headers: &HeaderMap, bytes: &[u8]) -> AppResult<Value> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(serde_json::Map::new()));
    }
    if let Some(content_type) = headers.get(header::CONTENT_TYPE) {
        let text = content_type.to_str().unwrap_or("");
        if !text.to_ascii_lowercase().contains("json") {
            return Err(AppError::UnsupportedMediaType(format!(
                "Content-Type '{text}' is not supported; send application/json"
            )));
        }
    }
    serde_json::from_slice(bytes)
        .map_err(|e| AppError::UnsupportedMediaType(format!("the body is not valid JSON: {e}")))
}

/// 429 with `Retry-After` in whole seconds (at least 1).
fn throttled_response(wait: Duration) -> Response {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let seconds = seconds.max(1);
    let mut response = error_response(
        StatusCode::TOO_MANY_REQUESTS,
        format!("too many failed logins from this address or for this user; retry in {seconds} s"),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

/// An error answer that is not JSON (axum's plain-text rejections, such as a websocket
/// route asked without `Upgrade`) becomes `{"error": <its text>}` with the same status.
async fn as_json_error(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let text = match to_bytes(response.into_body(), 64 * 1024).await {
        Ok(bytes) if !bytes.is_empty() => String::from_utf8_lossy(&bytes).into_owned(),
        _ => status
            .canonical_reason()
            .unwrap_or("request refused")
            .to_owned(),
    };
    error_response(status, text)
}

/// Checks Basic credentials through the login throttle (`crate::login`).
async fn log_in<C: Cloud + 'static>(
    edge: &Edge<C>,
    headers: &HeaderMap,
    client: Client,
) -> Result<String, Response> {
    let Some((user, secret)) = basic_credentials(headers) else {
        return Err(AppError::Unauthorized.into_response());
    };
    check_key(edge, &user, &secret, client)
        .await
        .map(|(username, _)| username)
}

/// Checks a user and key (Basic or the dashboard's login) through the login throttle.
async fn check_key<C: Cloud + 'static>(
    edge: &Edge<C>,
    user: &str,
    secret: &str,
    client: Client,
) -> Result<(String, SignedInWith), Response> {
    // The throttle's read fails closed: no secret is checked without it.
    let attempt = match edge.logins.check(client, user, login::now_ms()).await {
        Ok(Ok(attempt)) => attempt,
        Ok(Err(wait)) => return Err(throttled_response(wait)),
        Err(error) => return Err(AppError::from(error).into_response()),
    };
    match edge.app.login(user, secret).await {
        Ok(Login::Accepted(username, via)) => {
            if let Err(error) = edge.logins.succeeded(&attempt, login::now_ms()).await {
                tracing::warn!(%error, "the login throttle could not record a success");
            }
            Ok((username, via))
        }
        Ok(outcome) => {
            let exists = outcome == Login::WrongKey;
            if let Err(error) = edge.logins.failed(&attempt, exists, login::now_ms()).await {
                tracing::warn!(%error, "the login throttle could not count a failure");
                return Err(AppError::from(error).into_response());
            }
            Err(AppError::Unauthorized.into_response())
        }
        Err(error) => Err(error.into_response()),
    }
}

/// The wall clock in Unix seconds: sessions' times, shared by every replica.
fn unix_now() -> i64 {
    login::now_ms() / 1000
}

/// Ends a session that no longer holds (or that a new login replaces); a failure is only
/// logged: the session is refused anyway, and expires.
async fn end_session<C: Cloud + 'static>(edge: &Edge<C>, id: &str) {
    if let Err(error) = edge.app.end_session(id).await {
        tracing::warn!(%error, "could not delete an ended dashboard session");
    }
}

/// A 401 for the dashboard: names the session scheme, so a browser shows no Basic prompt.
fn session_unauthorized(message: &str) -> Response {
    let mut response = error_response(StatusCode::UNAUTHORIZED, message.to_owned());
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("FlotillaSession realm=\"flotilla\""),
    );
    response
}

/// The 403s of cookie authentication: another site's page, or a change without the CSRF
/// token (`session`).
fn session_refusal(
    method: &Method,
    headers: &HeaderMap,
    session: &session::Session,
) -> Option<Response> {
    if !session::same_origin(headers) {
        return Some(error_response(
            StatusCode::FORBIDDEN,
            "a request from another site's page with the session cookie is refused".to_owned(),
        ));
    }
    let reads = *method == Method::GET || *method == Method::HEAD;
    if !reads && !session::csrf_ok(headers, session) {
        return Some(error_response(
            StatusCode::FORBIDDEN,
            "X-CSRF-Token: a change made with the session cookie needs the session's CSRF token"
                .to_owned(),
        ));
    }
    None
}

/// The caller: Basic credentials (through the throttle) or, without an `Authorization`
/// header, the dashboard's session cookie (with its CSRF rules).
async fn authenticate<C: Cloud + 'static>(
    edge: &Edge<C>,
    method: &Method,
    headers: &HeaderMap,
    client: Client,
) -> Result<String, Response> {
    if headers.get(header::AUTHORIZATION).is_none()
        && let Some(id) = session::cookie(headers)
    {
        let session = match edge.app.session(&id, unix_now()).await {
            Ok(Some(session)) => session,
            Ok(None) => {
                return Err(session_unauthorized(
                    "the session has expired or ended; log in again",
                ));
            }
            Err(error) => return Err(error.into_response()),
        };
        if let Some(refused) = session_refusal(method, headers, &session) {
            return Err(refused);
        }
        // A session lives only as long as its credential: a revoked key, a new password, a
        // removed or disabled user end it at this request.
        match edge.app.still_holds(&session.username, &session.via).await {
            Ok(true) => return Ok(session.username),
            Ok(false) => {
                end_session(edge, &id).await;
                return Err(session_unauthorized(
                    "the credential this session was opened with was revoked or changed; log in again",
                ));
            }
            Err(error) => return Err(error.into_response()),
        }
    }
    log_in(edge, headers, client).await
}

#[derive(serde::Deserialize)]
struct LoginForm {
    user: String,
    key: String,
}

/// `/session`: POST logs in (`{"user", "key"}`, through the throttle) and sets the cookie;
/// GET answers the cookie's session; DELETE logs out. Answers carry the user and the
/// session's CSRF token.
async fn session_route<C: Cloud + 'static>(
    edge: &Edge<C>,
    method: &Method,
    headers: &HeaderMap,
    body: Body,
    client: Client,
) -> Response {
    let now = unix_now();
    let id = session::cookie(headers);
    let answer = |session: &session::Session, cookie: Option<String>| {
        let mut response = json_response(
            StatusCode::OK,
            &serde_json::json!({"user": session.username, "csrf_token": session.csrf_token}),
            None,
        );
        if let Some(cookie) = cookie
            && let Ok(value) = HeaderValue::from_str(&cookie)
        {
            response.headers_mut().insert(header::SET_COOKIE, value);
        }
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    };
    if *method == Method::POST {
        if !session::same_origin(headers) {
            return error_response(
                StatusCode::FORBIDDEN,
                "a login from another site's page is refused".to_owned(),
            );
        }
        let form = match to_bytes(body, 64 * 1024).await {
            Ok(bytes) => serde_json::from_slice::<LoginForm>(&bytes).ok(),
            Err(_) => None,
        };
        let Some(form) = form.filter(|f| !f.user.is_empty()) else {
            return session_unauthorized(
                "send {\"user\": ..., \"key\": ...}: your user name and API key",
            );
        };
        return match check_key(edge, &form.user, &form.key, client).await {
            Ok((username, via)) => {
                if let Some(old) = &id {
                    end_session(edge, old).await;
                }
                let created = match edge.app.open_session(&username, via, now).await {
                    Ok(created) => created,
                    Err(error) => return error.into_response(),
                };
                let cookie = session::set_cookie(Some(&created.id), edge.secure_cookies);
                answer(&created.session, Some(cookie))
            }
            Err(response) if response.status() == StatusCode::UNAUTHORIZED => {
                session_unauthorized("key: wrong user name or API key")
            }
            Err(response) => response,
        };
    }
    let current = match &id {
        Some(id) => match edge.app.session(id, now).await {
            Ok(session) => session,
            Err(error) => return error.into_response(),
        },
        None => None,
    };
    let Some(session) = current else {
        return session_unauthorized("not logged in");
    };
    if !matches!(
        edge.app.still_holds(&session.username, &session.via).await,
        Ok(true)
    ) {
        if let Some(id) = &id {
            end_session(edge, id).await;
        }
        return session_unauthorized(
            "the credential this session was opened with was revoked or changed; log in again",
        );
    }
    match *method {
        Method::GET | Method::HEAD => answer(&session, None),
        Method::DELETE => {
            if let Some(refused) = session_refusal(method, headers, &session) {
                return refused;
            }
            if let Some(id) = &id
                && let Err(error) = edge.app.end_session(id).await
            {
                return error.into_response();
            }
            answer(
                &session,
                Some(session::set_cookie(None, edge.secure_cookies)),
            )
        }
        _ => error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "method {method} is not allowed on {}",
                crate::routes::SESSION_PATH
            ),
        ),
    }
}

async fn dispatch<C: Cloud + 'static>(
    State(edge): State<Arc<Edge<C>>>,
    request: Request<Body>,
) -> Response {
    let app = &edge.app;
    let (mut parts, body) = request.into_parts();
    let peer_ip = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let peer = peer_ip.map(|ip| ip.to_string()).unwrap_or_default();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or("").to_owned();
    let parsed = parse_path(&path);
    if let Some(Parsed {
        route: Route::Ping, ..
    }) = parsed
    {
        // Seed 004's monitoring endpoint: 200 only when the server is healthy. Anyone may
        // ask, so the answer names the failed checks but not their detail (`/readyz`).
        let readiness = app.readiness().await;
        if readiness.ready {
            return (StatusCode::OK, "OK").into_response();
        }
        let failed: Vec<&str> = readiness
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.name.as_str())
            .collect();
        tracing::warn!(problems = readiness.problems(), "unhealthy");
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(serde_json::json!({
                "error": format!(
                    "unhealthy: {}; GET {} with credentials for the details",
                    failed.join(", "),
                    flotilla_api::uri::READYZ
                )
            })),
        )
            .into_response();
    }
    // Agents authenticate with their own scheme (`TutumAgentToken`), not Basic.
    if let Some(Parsed { route, .. }) = &parsed
        && is_agent_route(route)
    {
        return crate::agent_api::dispatch(
            app,
            route.clone(),
            &parts.method,
            &parts.headers,
            body,
            &peer,
        )
        .await;
    }
    if let Some(Parsed { route, .. }) = &parsed {
        if let Some(response) = crate::dashboard::serve(route) {
            return response;
        }
        if *route == Route::Session {
            return session_route(
                &edge,
                &parts.method,
                &parts.headers,
                body,
                Client::of(peer_ip),
            )
            .await;
        }
    }
    let username =
        match authenticate(&edge, &parts.method, &parts.headers, Client::of(peer_ip)).await {
            Ok(username) => username,
            Err(response) => return response,
        };
    let Some(Parsed { route, namespace }) = parsed else {
        return error_response(StatusCode::NOT_FOUND, format!("Not found: {path}"));
    };
    if !allows(&route, &parts.method) {
        return error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {} is not allowed on {path}", parts.method),
        );
    }
    // Authorization, decided in one place (`authz`) from the route table's rule: before a
    // websocket's upgrade, and for REST after the body is read (so an oversized body is a
    // 413 whoever sends it) and before any handler runs.
    let principal = match app.principal(&username).await {
        Ok(Some(principal)) => principal,
        Ok(None) => return AppError::Unauthorized.into_response(),
        Err(error) => return error.into_response(),
    };
    let rule = crate::routes::access(&route, &parts.method);
    let authorize = || app.authorize(&principal, &route, rule, namespace.as_deref());
    if matches!(route, Route::Events | Route::ActionLogs(_)) {
        let org = match authorize().await {
            Ok(org) => org,
            Err(error) => return error.into_response(),
        };
        if let Some(response) =
            crate::stream::upgrade(app, &route, &mut parts, &principal, org, &query).await
        {
            return as_json_error(response).await;
        }
    }
    let bytes = match to_bytes(body, MAX_BODY).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is larger than {MAX_BODY} bytes or could not be read"),
            );
        }
    };
    let org = match authorize().await {
        Ok(org) => org,
        Err(error) => return error.into_response(),
    };
    let caller = Caller {
        username,
        method: parts.method.to_string(),
        path: path.clone(),
        user_agent: parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned(),
        ip: peer,
        body: String::from_utf8_lossy(&bytes).into_owned(),
        principal,
        org,
    };
    let request = Handled {
        app,
        caller: &caller,
        headers: &parts.headers,
        body: &bytes,
        path: &path,
        query: &query,
    };
    match request.handle(route, &parts.method).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

struct Handled<'a, C> {
    app: &'a App<C>,
    caller: &'a Caller,
    headers: &'a HeaderMap,
    body: &'a [u8],
    path: &'a str,
    query: &'a str,
}

impl<C: Cloud + 'static> Handled<'_, C> {
    fn body(&self) -> AppResult<Value> {
        parse_body(self.headers, self.body)
    }

    fn list<T: Serialize>(&self, objects: Vec<T>) -> AppResult<Response> {
        let envelope = paginate(objects, self.path, self.query)?;
        Ok(json_response(StatusCode::OK, &envelope, None))
    }

    /// What the caller may view, for the lists cut in memory.
    async fn viewer(&self) -> AppResult<Viewer> {
        self.app
            .viewer(&self.caller.principal, self.caller.org.as_deref())
            .await
    }

    fn one<T: Serialize>(&self, object: Option<T>, what: &str) -> AppResult<Response> {
        match object {
            Some(object) => Ok(json_response(StatusCode::OK, &object, None)),
            None => Err(AppError::NotFound(format!("{what} not found"))),
        }
    }

    async fn handle(&self, route: Route, method: &Method) -> AppResult<Response> {
        let app = self.app;
        let caller = self.caller;
        Ok(match (route, method.clone()) {
            (Route::Ping, _) => (StatusCode::OK, "OK").into_response(),
            (Route::Providers, _) => self.list(app.catalog().await?.providers.clone())?,
            (Route::Provider(name), _) => {
                let catalog = app.catalog().await?;
                let found = catalog.providers.iter().find(|p| p.name == name).cloned();
                self.one(found, &format!("provider '{name}'"))?
            }
            (Route::ProviderCredentials(name), Method::PUT) => {
                let body = self.body()?;
                let linked = app.link_provider_credentials(&name, &body).await?;
                json_response(StatusCode::OK, &linked, None)
            }
            (Route::ProviderCredentials(name), _) => json_response(
                StatusCode::OK,
                &app.provider_credentials(&name).await?,
                None,
            ),
            (Route::Regions, _) => self.list(app.catalog().await?.regions.clone())?,
            (Route::Region(provider, name), _) => {
                let uri = api::uri::region(&provider, &name);
                let catalog = app.catalog().await?;
                let found = catalog
                    .regions
                    .iter()
                    .find(|r| r.resource_uri == uri)
                    .cloned();
                self.one(found, &format!("region '{provider}/{name}'"))?
            }
            (Route::RegionVpcs(provider, region), _) => {
                self.list(app.region_vpcs(&provider, &region).await?)?
            }
            (Route::RegionSubnets(provider, region), _) => {
                self.list(app.region_subnets(&provider, &region).await?)?
            }
            (Route::RegionSecurityGroups(provider, region), _) => {
                self.list(app.region_security_groups(&provider, &region).await?)?
            }
            (Route::InstanceProfiles(provider), _) => {
                self.list(app.instance_profiles(&provider).await?)?
            }
            (Route::AvailabilityZones, _) => {
                self.list(app.catalog().await?.availability_zones.clone())?
            }
            (Route::AvailabilityZone(provider, region, name), _) => {
                let uri = api::uri::availability_zone(&provider, &region, &name);
                let catalog = app.catalog().await?;
                let found = catalog
                    .availability_zones
                    .iter()
                    .find(|z| z.resource_uri == uri)
                    .cloned();
                self.one(
                    found,
                    &format!("availability zone '{provider}/{region}/{name}'"),
                )?
            }
            (Route::NodeTypes, _) => self.list(app.catalog().await?.node_types.clone())?,
            (Route::NodeType(provider, name), _) => {
                let uri = api::uri::node_type(&provider, &name);
                let catalog = app.catalog().await?;
                let found = catalog
                    .node_types
                    .iter()
                    .find(|t| t.resource_uri == uri)
                    .cloned();
                self.one(found, &format!("node type '{provider}/{name}'"))?
            }
            (Route::Clusters, Method::POST) => {
                let body = self.body()?;
                outcome_response(&app.create_cluster(caller, &body).await?, true)
            }
            (Route::ClusterPreview, _) => {
                let body = self.body()?;
                json_response(
                    StatusCode::OK,
                    &app.preview_cluster(&body, caller.org.as_deref()).await?,
                    None,
                )
            }
            (Route::Clusters, _) => self.list(app.clusters(&self.viewer().await?).await?)?,
            (Route::Cluster(uuid), Method::PATCH) => {
                let body = self.body()?;
                outcome_response(&app.patch_cluster(caller, &uuid, &body).await?, false)
            }
            (Route::Cluster(uuid), Method::DELETE) => {
                outcome_response(&app.delete_cluster(caller, &uuid).await?, false)
            }
            (Route::Cluster(uuid), _) => {
                json_response(StatusCode::OK, &app.cluster(&uuid).await?, None)
            }
            (Route::Swarms, Method::POST) => {
                let body = self.body()?;
                outcome_response(&app.create_swarm(caller, &body).await?, true)
            }
            (Route::Swarms, _) => self.list(app.swarms(&self.viewer().await?).await?)?,
            (Route::Metrics, _) => (
                [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                app.metrics_text().await?,
            )
                .into_response(),
            (Route::Readyz, _) => {
                let readiness = app.readiness().await;
                let status = if readiness.ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                json_response(status, &readiness, None)
            }
            (Route::SwarmService(id), _) => {
                let viewer = self.viewer().await?;
                json_response(
                    StatusCode::OK,
                    &app.swarm_service(&viewer, &id).await?,
                    None,
                )
            }
            (Route::Swarm(uuid), Method::PATCH) => {
                let body = self.body()?;
                outcome_response(&app.patch_swarm(caller, &uuid, &body).await?, false)
            }
            (Route::Swarm(uuid), Method::DELETE) => {
                outcome_response(&app.delete_swarm(caller, &uuid).await?, false)
            }
            (Route::Swarm(uuid), _) => {
                json_response(StatusCode::OK, &app.swarm(&uuid).await?, None)
            }
            (Route::ClusterDeploy(uuid), _) => {
                outcome_response(&app.deploy_cluster(caller, &uuid).await?, false)
            }
            (Route::Nodes, _) => {
                // The common filters and the page go to SQL, so a page costs its rows; any
                // other filter takes the generic in-memory path over every node.
                let list = ListQuery::parse(self.query)?;
                // A member's list is cut in the same query (`authz`: only what it may view).
                let viewer = (!caller.principal.admin).then(|| caller.principal.username.clone());
                match list.node_filter() {
                    Some(mut filter) => {
                        filter.viewer = viewer;
                        filter.org = caller.org.clone();
                        let total = app.count_nodes(&filter).await?;
                        let page = app
                            .find_nodes(&filter, Some((list.limit, list.offset)))
                            .await?;
                        json_response(StatusCode::OK, &list.envelope(self.path, total, page), None)
                    }
                    None => {
                        let filter = NodeFilter {
                            viewer,
                            org: caller.org.clone(),
                            ..NodeFilter::default()
                        };
                        self.list(app.find_nodes(&filter, None).await?)?
                    }
                }
            }
            (Route::Node(uuid), Method::PATCH) => {
                let body = self.body()?;
                outcome_response(&app.patch_node(caller, &uuid, &body).await?, false)
            }
            (Route::Node(uuid), Method::DELETE) => {
                outcome_response(&app.delete_node(caller, &uuid).await?, false)
            }
            (Route::Node(uuid), _) => json_response(StatusCode::OK, &app.node(&uuid).await?, None),
            (Route::NodeHealthCheck(uuid), _) => {
                outcome_response(&app.health_check_node(caller, &uuid).await?, false)
            }
            (Route::Actions, _) => self.list(app.actions(&self.viewer().await?).await?)?,
            (Route::Action(uuid), _) => {
                json_response(StatusCode::OK, &app.action(&uuid).await?, None)
            }
            (Route::ActionCancel(uuid), _) => {
                let action = app.cancel_action(&uuid).await?;
                json_response(StatusCode::ACCEPTED, &action, Some(&action.resource_uri))
            }
            (Route::ActionRetry(uuid), _) => {
                let action = app.retry_action(&uuid).await?;
                json_response(StatusCode::ACCEPTED, &action, Some(&action.resource_uri))
            }
            (Route::Services, _) => self.list(Vec::<Value>::new())?,
            (Route::Orgs, Method::POST) => {
                let body = self.body()?;
                json_response(
                    StatusCode::CREATED,
                    &app.create_org(caller, &body).await?,
                    None,
                )
            }
            (Route::Orgs, _) => self.list(app.orgs(&self.viewer().await?).await?)?,
            (Route::Org(org), Method::DELETE) => {
                json_response(StatusCode::OK, &app.delete_org(caller, &org).await?, None)
            }
            (Route::Org(org), _) => json_response(StatusCode::OK, &app.org(&org).await?, None),
            (Route::Teams(org), Method::POST) => {
                let body = self.body()?;
                let team = app.create_team(caller, &org, &body).await?;
                json_response(StatusCode::CREATED, &team, None)
            }
            (Route::Teams(org), _) => self.list(app.teams(&org).await?)?,
            (Route::Team(org, team), Method::PATCH) => {
                let body = self.body()?;
                let team = app.patch_team(caller, &org, &team, &body).await?;
                json_response(StatusCode::OK, &team, None)
            }
            (Route::Team(org, team), Method::DELETE) => json_response(
                StatusCode::OK,
                &app.delete_team(caller, &org, &team).await?,
                None,
            ),
            (Route::Team(org, team), _) => {
                json_response(StatusCode::OK, &app.team(&org, &team).await?, None)
            }
            (Route::Grants(org), Method::POST) => {
                let body = self.body()?;
                let grant = app.create_grant(caller, &org, &body).await?;
                json_response(StatusCode::CREATED, &grant, None)
            }
            (Route::Grants(org), _) => self.list(app.grants(&org).await?)?,
            (Route::Grant(org, id), _) => json_response(
                StatusCode::OK,
                &app.delete_grant(caller, &org, &id).await?,
                None,
            ),
            (Route::Users, Method::POST) => {
                let body = self.body()?;
                let (user, key) = app.create_user(caller, &body).await?;
                no_store(json_response(
                    StatusCode::CREATED,
                    &serde_json::json!({"user": user, "api_key": key}),
                    None,
                ))
            }
            (Route::Users, _) => self.list(app.users(&self.viewer().await?).await?)?,
            (Route::User(name), Method::PATCH) => {
                let body = self.body()?;
                json_response(
                    StatusCode::OK,
                    &app.patch_user(caller, &name, &body).await?,
                    None,
                )
            }
            (Route::User(name), Method::DELETE) => {
                json_response(StatusCode::OK, &app.delete_user(caller, &name).await?, None)
            }
            (Route::User(name), _) => json_response(StatusCode::OK, &app.user(&name).await?, None),
            (Route::ApiKeys(name), Method::POST) => {
                let body = self.body()?;
                let key = app.create_api_key(caller, &name, &body).await?;
                no_store(json_response(StatusCode::CREATED, &key, None))
            }
            (Route::ApiKeys(name), _) => self.list(app.api_keys(&name).await?)?,
            (Route::Bundles(name), Method::POST) => {
                let body = self.body()?;
                let created = app.create_bundle(caller, &name, &body).await?;
                no_store(json_response(StatusCode::CREATED, &created, None))
            }
            (Route::Bundles(name), _) => self.list(app.bundles(&name).await?)?,
            (Route::Bundle(name, id), Method::DELETE) => json_response(
                StatusCode::OK,
                &app.revoke_bundle(caller, &name, &id).await?,
                None,
            ),
            (Route::Bundle(name, id), _) => {
                json_response(StatusCode::OK, &app.bundle(&name, &id).await?, None)
            }
            (Route::ApiKey(name, key), _) => {
                let revoked = app.revoke_api_key(caller, &name, &key).await?;
                json_response(StatusCode::OK, &revoked, None)
            }
            (Route::Ldap, Method::PUT) => {
                let body = self.body()?;
                no_store(json_response(
                    StatusCode::OK,
                    &app.put_ldap_settings(caller, &body).await?,
                    None,
                ))
            }
            (Route::Ldap, _) => json_response(StatusCode::OK, &app.ldap_settings().await?, None),
            (Route::LdapSync, _) => {
                json_response(StatusCode::OK, &app.sync_directory().await?, None)
            }
            (Route::OpenApi, _) => json_response(StatusCode::OK, &crate::openapi::document(), None),
            (Route::Token, _) => json_response(
                StatusCode::CREATED,
                &app.create_byo_token(caller).await?,
                None,
            ),
            // Answered by `stream::upgrade` before the body is read.
            (Route::Events | Route::ActionLogs(_), _) => {
                return Err(AppError::BadRequest(format!(
                    "{} is a websocket; connect with an Upgrade request",
                    self.path
                )));
            }
            (
                Route::AgentNodes
                | Route::AgentNode(_)
                | Route::AgentNodePing(_)
                | Route::AgentNodeDockerProxy(_)
                | Route::AgentNodeBundleCheck(_)
                | Route::Download
                | Route::Dashboard
                | Route::DashboardScript
                | Route::DashboardStyle
                | Route::Session,
                _,
            ) => return Err(AppError::NotFound(format!("Not found: {}", self.path))),
        })
    }
}

/// Query parameters that are not filters.
const NOT_FILTERS: &[&str] = &["limit", "offset", "format", "include_related"];

fn parse_count(name: &str, value: &str) -> AppResult<u64> {
    value
        .trim()
        .parse::<u64>()
        .map_err(|_| AppError::BadRequest(format!("{name}: '{value}' is not a whole number")))
}

/// A list request's query: the page asked for and the filters, in their order.
struct ListQuery {
    limit: u64,
    offset: u64,
    filters: Vec<(String, String)>,
}

impl ListQuery {
    fn parse(query: &str) -> AppResult<ListQuery> {
        let mut limit = DEFAULT_LIMIT;
        let mut offset = 0;
        let mut filters = Vec::new();
        for (name, value) in url::form_urlencoded::parse(query.as_bytes()).into_owned() {
            match name.as_str() {
                "limit" => limit = parse_count("limit", &value)?,
                "offset" => offset = parse_count("offset", &value)?,
                _ if NOT_FILTERS.contains(&name.as_str()) => {}
                _ => filters.push((name, value)),
            }
        }
        if limit > MAX_LIMIT {
            return Err(AppError::BadRequest(format!(
                "limit: {limit} is more than the maximum of {MAX_LIMIT}"
            )));
        }
        if limit == 0 {
            // Tastypie's "as many as allowed".
            limit = MAX_LIMIT;
        }
        Ok(ListQuery {
            limit,
            offset,
            filters,
        })
    }

    /// The envelope of one page of `total` matching objects, with `next`/`previous` paths
    /// that keep the filters.
    fn envelope<T>(&self, path: &str, total: u64, page: Vec<T>) -> api::ListEnvelope<T> {
        let (limit, offset) = (self.limit, self.offset);
        let base = if path.ends_with('/') {
            path.to_owned()
        } else {
            format!("{path}/")
        };
        let link = |new_offset: u64| {
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            for (name, value) in &self.filters {
                query.append_pair(name, value);
            }
            query.append_pair("limit", &limit.to_string());
            query.append_pair("offset", &new_offset.to_string());
            format!("{base}?{}", query.finish())
        };
        let next = (offset.saturating_add(limit) < total).then(|| link(offset + limit));
        let previous = (offset > 0).then(|| link(offset.saturating_sub(limit)));
        api::ListEnvelope {
            meta: api::Meta {
                limit,
                next,
                offset,
                previous,
                total_count: total,
            },
            objects: page,
        }
    }

    /// The node filters SQL can apply, or `None` when another filter (or a repeated one)
    /// needs the generic in-memory matching of [`paginate`].
    fn node_filter(&self) -> Option<NodeFilter> {
        let mut filter = NodeFilter::default();
        for (name, value) in &self.filters {
            let slot = match name.as_str() {
                "node_cluster" => {
                    // A uuid, or the cluster's resource URI (with or without the slash).
                    let uuid = value.trim_end_matches('/').rsplit('/').next().unwrap_or("");
                    let as_uri = api::uri::node_cluster(uuid);
                    if value.contains('/')
                        && value.trim_end_matches('/') != as_uri.trim_end_matches('/')
                    {
                        return None;
                    }
                    (&mut filter.cluster_uuid, uuid.to_owned())
                }
                "state" => (&mut filter.state, value.clone()),
                "uuid" => (&mut filter.uuid, value.clone()),
                "uuid__startswith" => (&mut filter.uuid_prefix, value.clone()),
                _ => return None,
            };
            if slot.0.replace(slot.1).is_some() {
                return None;
            }
        }
        Some(filter)
    }
}

/// Filters rendered objects, then cuts one page: the generic list, for tables that are small
/// (clusters, actions) or filters SQL does not know.
fn paginate<T: Serialize>(
    objects: Vec<T>,
    path: &str,
    query: &str,
) -> AppResult<api::ListEnvelope<Value>> {
    let list = ListQuery::parse(query)?;
    let mut matching = Vec::new();
    for object in objects {
        let value = serde_json::to_value(&object)
            .map_err(|e| AppError::BadRequest(format!("cannot render an object: {e}")))?;
        let mut keep = true;
        for (name, wanted) in &list.filters {
            if !matches_filter(&value, name, wanted)? {
                keep = false;
                break;
            }
        }
        if keep {
            matching.push(value);
        }
    }
    let total = matching.len() as u64;
    let page: Vec<Value> = matching
        .into_iter()
        .skip(usize::try_from(list.offset).unwrap_or(usize::MAX))
        .take(usize::try_from(list.limit).unwrap_or(usize::MAX))
        .collect();
    Ok(list.envelope(path, total, page))
}

/// A filter value for a date field: the REST format, or RFC 3339 for convenience.
fn parse_filter_date(name: &str, text: &str) -> AppResult<i64> {
    if let Ok(instant) = date::parse(text) {
        return Ok(instant.unix_timestamp());
    }
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(|instant| instant.unix_timestamp())
        .map_err(|_| {
            AppError::BadRequest(format!(
                "{name}: '{text}' is not a date like 'Tue, 16 Sep 2014 17:01:15 +0000'"
            ))
        })
}

fn string_matches(field: &str, wanted: &str) -> bool {
    if field == wanted {
        return true;
    }
    // A resource URI also matches without its trailing slash and by its last segment
    // (`region=us-east-1`).
    field.starts_with("/api/")
        && (field.trim_end_matches('/') == wanted.trim_end_matches('/')
            || field.trim_end_matches('/').rsplit('/').next() == Some(wanted))
}

/// Tastypie-style filter on one rendered object. Unknown fields do not filter.
fn matches_filter(object: &Value, name: &str, wanted: &str) -> AppResult<bool> {
    let (field, operator) = match name.rsplit_once("__") {
        Some((field, op @ ("startswith" | "gte" | "lte" | "gt" | "lt"))) => (field, Some(op)),
        _ => (name, None),
    };
    let Some(value) = object.get(field) else {
        return Ok(true);
    };
    Ok(match (operator, value) {
        (None, Value::String(s)) => string_matches(s, wanted),
        (None, Value::Array(items)) => items
            .iter()
            .any(|item| item.as_str().is_some_and(|s| string_matches(s, wanted))),
        (None, Value::Bool(b)) => wanted.eq_ignore_ascii_case(if *b { "true" } else { "false" }),
        (None, Value::Number(n)) => n.to_string() == wanted,
        (None, _) => false,
        (Some("startswith"), Value::String(s)) => s.starts_with(wanted),
        (Some("startswith"), _) => false,
        (Some(op), value) => {
            let wanted_time = parse_filter_date(name, wanted)?;
            let Some(text) = value.as_str() else {
                return Ok(false);
            };
            let Ok(actual) = date::parse(text) else {
                return Ok(false);
            };
            let actual = actual.unix_timestamp();
            match op {
                "gte" => actual >= wanted_time,
                "lte" => actual <= wanted_time,
                "gt" => actual > wanted_time,
                _ => actual < wanted_time,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pages_link_with_paths_under_api_and_keep_filters() {
        let objects: Vec<Value> = (0..30)
            .map(|i| json!({"name": format!("c{i}"), "state": "Init"}))
            .collect();
        let page =
            paginate(objects.clone(), "/api/infra/v1/nodecluster/", "state=Init").expect("page");
        assert_eq!(page.meta.total_count, 30);
        assert_eq!(page.objects.len(), 25);
        let next = page.meta.next.expect("next");
        assert!(next.starts_with("/api/infra/v1/nodecluster/?"), "{next}");
        assert!(
            next.contains("state=Init") && next.contains("limit=25") && next.contains("offset=25")
        );
        let last = paginate(
            objects.clone(),
            "/api/infra/v1/nodecluster",
            "limit=25&offset=25",
        )
        .expect("page");
        assert_eq!(last.objects.len(), 5);
        assert_eq!(last.meta.next, None);
        assert_eq!(
            last.meta.previous.as_deref(),
            Some("/api/infra/v1/nodecluster/?limit=25&offset=0")
        );
        assert!(paginate(objects.clone(), "/x/", "limit=1001").is_err());
        assert!(paginate(objects, "/x/", "offset=-1").is_err());
    }

    #[test]
    fn filters_match_uris_by_segment_and_dates_by_time() {
        let object = json!({"region": "/api/infra/v1/region/aws/us-east-1/", "uuid": "abcd-1",
            "start_date": "Tue, 16 Sep 2014 17:01:15 +0000", "regions": ["/api/infra/v1/region/aws/eu-west-1/"]});
        assert!(
            matches_filter(&object, "region", "/api/infra/v1/region/aws/us-east-1/").expect("ok")
        );
        assert!(matches_filter(&object, "region", "us-east-1").expect("ok"));
        assert!(!matches_filter(&object, "region", "us-east-2").expect("ok"));
        assert!(matches_filter(&object, "regions", "eu-west-1").expect("ok"));
        assert!(matches_filter(&object, "uuid__startswith", "abc").expect("ok"));
        assert!(matches_filter(&object, "start_date__gte", "2014-09-16T17:00:00Z").expect("ok"));
        assert!(
            !matches_filter(
                &object,
                "start_date__lte",
                "Tue, 16 Sep 2014 17:01:14 +0000"
            )
            .expect("ok")
        );
        assert!(matches_filter(&object, "start_date__gte", "yesterday").is_err());
        assert!(matches_filter(&object, "unknown", "x").expect("ignored"));
    }
}
