//! A fault/latency-injecting HTTP/1.1 reverse proxy in front of moto.
//!
//! Flotilla talks to EC2 through the official SDK; pointing the SDK's
//! `endpoint_url` at this proxy lets tests see exactly which API calls were
//! made (the call log) and make any of them fail the way real AWS fails
//! (throttling, capacity, IAM denials, dropped connections) without touching
//! the code under test.
//!
//! Design decisions:
//! * It runs in-process as tokio tasks on the caller's runtime, so a test owns
//!   its proxy, and dropping the proxy aborts the accept loop together with
//!   every connection it serves (they live in a `JoinSet` owned by that task).
//! * The control surface (`add_rule`, `calls`, ...) is synchronous behind a
//!   `std::sync::Mutex` that is never held across an `.await`: tests mutate it
//!   between SDK calls and never need to await it.
//! * Injected errors use exactly the EC2 query-protocol XML shape, so the SDK
//!   parses `code()`/`message()` just as for real AWS, and HTTP statuses match
//!   AWS's (5xx for server-side faults), because the SDK's retry classifier
//!   looks at them.
//! * moto answers an HTML 500 page for operations it doesn't implement. The
//!   SDK would retry that as a transient error and a test would just see
//!   slowness; we turn it into a non-retryable 400 `MotoUnsupported` so the
//!   gap is obvious.
//! * Availability-zone rules must also match requests that only name a subnet
//!   (that is how Flotilla launches instances), so the proxy asks moto for the
//!   subnet's AZ with the caller's own credentials/account, and caches it.
//! * Upstream connections are not pooled: werkzeug may close idle keep-alive
//!   connections, and a stale pooled connection would surface as a spurious
//!   failure that looks like an injected fault. Loopback connects are cheap.
//! * Crash tests need "the code under test has made exactly K calls, now kill
//!   it" ([`FaultProxy::hold_after`]): calls after the K-th are held before
//!   they reach moto, and released ones are dropped unanswered, never
//!   forwarded — a killed process's late request must not act after its
//!   successor started.
//! * Eventual consistency ([`FaultProxy::set_eventual_consistency`]) is
//!   emulated on the response side: ids from successful `Create*` and
//!   `RunInstances` answers are remembered, and the matching `<item>` elements
//!   are cut out of `Describe*` answers until the delay has passed. The cut is
//!   by the item's own id element (`<vpcId>` directly inside a VPC item), so a
//!   subnet of a hidden VPC stays visible.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

const ACCOUNT_HEADER: &str = "x-moto-account-id";

/// One request seen by the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    /// 1-based arrival order since start (or the last [`FaultProxy::clear_log`]).
    pub seq: u64,
    /// The query-protocol `Action`, or `""` for requests without one.
    pub action: String,
    /// From the SigV4 credential scope; `"unknown"` when absent.
    pub region: String,
    /// The status the client saw; 0 when the connection was dropped.
    pub status: u16,
    /// The code of the injected error (e.g. `"RequestLimitExceeded"`, `"Drop"`).
    /// `None` for requests answered by moto, including delayed ones.
    pub injected: Option<String>,
    /// Decoded query-string and form-body parameters, in order.
    pub params: Vec<(String, String)>,
    /// When the request arrived at the proxy.
    pub at: Instant,
    /// The access key id from the SigV4 credential scope; `""` when absent.
    pub access_key: String,
}

/// What a matching [`Rule`] does to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// 503 `RequestLimitExceeded`.
    Throttle,
    /// 500 `InternalError`.
    InternalError,
    /// Any EC2-style error.
    Error {
        status: u16,
        code: String,
        message: String,
    },
    /// 500 `InsufficientInstanceCapacity` (a server error in AWS's error list).
    InsufficientCapacity,
    /// 400 `Unsupported`.
    Unsupported,
    /// 403 `UnauthorizedOperation` for a missing `iam:PassRole`.
    PassRoleDenied,
    /// 401 `AuthFailure`.
    AuthFailure,
    /// Close the connection without answering.
    Drop,
    /// Wait, then forward normally.
    Delay(Duration),
}

impl Fault {
    /// `(status, code, message)` for the faults that answer with an error.
    fn error(&self) -> Option<(u16, String, String)> {
        let (status, code, message) = match self {
            Fault::Throttle => (503, "RequestLimitExceeded", "Request limit exceeded."),
            Fault::InternalError => (500, "InternalError", "An internal error has occurred."),
            Fault::Error {
                status,
                code,
                message,
            } => {
                return Some((*status, code.clone(), message.clone()));
            }
            Fault::InsufficientCapacity => (
                500,
                "InsufficientInstanceCapacity",
                "We currently do not have sufficient capacity in the Availability Zone you requested",
            ),
            Fault::Unsupported => (
                400,
                "Unsupported",
                "The requested configuration is currently not supported.",
            ),
            Fault::PassRoleDenied => (
                403,
                "UnauthorizedOperation",
                "You are not authorized to perform this operation. User: \
                 arn:aws:iam::123456789012:user/flotilla is not authorized to perform: \
                 iam:PassRole on resource: arn:aws:iam::123456789012:role/flotilla-node",
            ),
            Fault::AuthFailure => (
                401,
                "AuthFailure",
                "AWS was not able to validate the provided access credentials",
            ),
            Fault::Drop | Fault::Delay(_) => return None,
        };
        Some((status, code.to_string(), message.to_string()))
    }
}

/// When to inject a [`Fault`]. All set conditions must hold; the first
/// matching rule (in insertion order) wins. Without `.fault(..)` a rule
/// injects [`Fault::InternalError`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub action: Option<String>,
    pub region: Option<String>,
    /// This parameter must be present with exactly this value.
    pub param: Option<(String, String)>,
    /// Some parameter whose name contains this string must be present.
    pub param_present: Option<String>,
    /// `Placement.AvailabilityZone`, or the AZ of the named subnet.
    pub availability_zone: Option<String>,
    /// Only the proxy's K-th call (1-based `seq`).
    pub nth: Option<u64>,
    /// Only requests signed with this access key id.
    pub access_key: Option<String>,
    pub skip_dry_run: bool,
    pub only_dry_run: bool,
    /// Fire at most this many times; `None` = forever.
    pub times: Option<u32>,
    pub fault: Fault,
}

impl Rule {
    /// Matches every request.
    pub fn any() -> Rule {
        Rule {
            action: None,
            region: None,
            param: None,
            param_present: None,
            availability_zone: None,
            nth: None,
            access_key: None,
            skip_dry_run: false,
            only_dry_run: false,
            times: None,
            fault: Fault::InternalError,
        }
    }
    pub fn action(action: impl Into<String>) -> Rule {
        Rule {
            action: Some(action.into()),
            ..Rule::any()
        }
    }
    pub fn in_region(mut self, region: impl Into<String>) -> Rule {
        self.region = Some(region.into());
        self
    }
    pub fn in_az(mut self, az: impl Into<String>) -> Rule {
        self.availability_zone = Some(az.into());
        self
    }
    pub fn with_param(mut self, name: impl Into<String>, value: impl Into<String>) -> Rule {
        self.param = Some((name.into(), value.into()));
        self
    }
    pub fn with_param_present(mut self, name_part: impl Into<String>) -> Rule {
        self.param_present = Some(name_part.into());
        self
    }
    pub fn nth(mut self, seq: u64) -> Rule {
        self.nth = Some(seq);
        self
    }
    /// Only requests signed with `access_key_id` (e.g. revoked keys).
    pub fn with_access_key(mut self, access_key_id: impl Into<String>) -> Rule {
        self.access_key = Some(access_key_id.into());
        self
    }
    pub fn skip_dry_run(mut self) -> Rule {
        self.skip_dry_run = true;
        self
    }
    pub fn only_dry_run(mut self) -> Rule {
        self.only_dry_run = true;
        self
    }
    pub fn times(mut self, n: u32) -> Rule {
        self.times = Some(n);
        self
    }
    pub fn fault(mut self, fault: Fault) -> Rule {
        self.fault = fault;
        self
    }

    /// Everything but the AZ condition, which may need a lookup.
    fn matches_static(&self, call: &Call, seq: u64) -> bool {
        let dry_run = call
            .param("DryRun")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        self.action.as_ref().is_none_or(|a| *a == call.action)
            && self.region.as_ref().is_none_or(|r| *r == call.region)
            && self
                .param
                .as_ref()
                .is_none_or(|(n, v)| call.param(n) == Some(v.as_str()))
            && self
                .param_present
                .as_ref()
                .is_none_or(|p| call.params.iter().any(|(n, _)| n.contains(p.as_str())))
            && self.nth.is_none_or(|k| k == seq)
            && self
                .access_key
                .as_ref()
                .is_none_or(|k| *k == call.access_key)
            && !(self.skip_dry_run && dry_run)
            && (!self.only_dry_run || dry_run)
    }
}

/// The parsed essentials of an incoming request.
struct Call {
    action: String,
    region: String,
    access_key: String,
    params: Vec<(String, String)>,
}

impl Call {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Subnets the request launches into.
    fn subnet_ids(&self) -> Vec<&str> {
        self.params
            .iter()
            .filter(|(n, _)| {
                n == "SubnetId" || (n.starts_with("NetworkInterface.") && n.ends_with(".SubnetId"))
            })
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

struct RandomFaults {
    rng: StdRng,
    throttle_rate: f64,
    internal_error_rate: f64,
}

/// An armed [`FaultProxy::hold_after`].
struct Hold {
    /// Calls with `first <= seq <= last` are let through; later ones are held.
    first: u64,
    last: u64,
    /// How many of the let-through calls have been answered.
    answered: u64,
    /// Identifies this hold, so a held call notices its release.
    id: u64,
}

#[derive(Default)]
struct Control {
    next_seq: u64,
    calls: Vec<CallRecord>,
    latency: Duration,
    random: Option<RandomFaults>,
    /// Each rule with how often it has fired.
    rules: Vec<(Rule, u32)>,
    subnet_azs: HashMap<String, String>,
    hold: Option<Hold>,
    holds_made: u64,
    /// How long a new resource stays hidden from describes (zero: off).
    consistency_delay: Duration,
    /// Ids of new resources and when they become visible.
    hidden: HashMap<String, Instant>,
}

impl Control {
    /// Logs a finished call and counts it against an armed hold.
    fn finish(&mut self, record: CallRecord) {
        if let Some(hold) = self.hold.as_mut()
            && (hold.first..=hold.last).contains(&record.seq)
        {
            hold.answered += 1;
        }
        self.calls.push(record);
    }
}

struct Shared {
    upstream: String,
    account_id: Option<String>,
    client: Client<HttpConnector, Full<Bytes>>,
    control: Mutex<Control>,
}

impl Shared {
    fn control(&self) -> std::sync::MutexGuard<'_, Control> {
        // A panicking test thread must not wedge every other test's proxy.
        self.control.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// See the module docs. Stops serving when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_loop: JoinHandle<()>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("upstream", &self.shared.upstream)
            .field("account_id", &self.shared.account_id)
            .finish()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

impl FaultProxy {
    /// Starts a proxy on a free loopback port forwarding to `upstream`
    /// (e.g. `Moto::shared().endpoint()`). With `account_id`, every forwarded
    /// request is pinned to that moto account.
    pub async fn start(upstream: &str, account_id: Option<String>) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding 127.0.0.1:0 cannot fail");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build_http();
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            account_id,
            client,
            control: Mutex::new(Control::default()),
        });
        let accept_loop = tokio::spawn(accept_loop(listener, shared.clone()));
        FaultProxy {
            addr,
            shared,
            accept_loop,
        }
    }

    /// `http://127.0.0.1:PORT`, for the SDK's `endpoint_url`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Completed calls in arrival order.
    pub fn calls(&self) -> Vec<CallRecord> {
        let mut calls = self.shared.control().calls.clone();
        calls.sort_by_key(|c| c.seq);
        calls
    }

    pub fn count(&self, action: &str) -> usize {
        self.shared
            .control()
            .calls
            .iter()
            .filter(|c| c.action == action)
            .count()
    }

    pub fn total(&self) -> usize {
        self.shared.control().calls.len()
    }

    pub fn counts_by_action(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for call in &self.shared.control().calls {
            *counts.entry(call.action.clone()).or_insert(0) += 1;
        }
        counts
    }

    /// Forgets the log and restarts `seq` at 1, so `nth` rules added
    /// afterwards count from here.
    pub fn clear_log(&self) {
        let mut control = self.shared.control();
        control.calls.clear();
        control.next_seq = 0;
    }

    /// Delays every call by `d` before it is forwarded or answered.
    pub fn set_latency(&self, d: Duration) {
        self.shared.control().latency = d;
    }

    /// Fails a seeded-random share of calls that carry an `Action` (and that
    /// no rule matched): throttles first, then internal errors. Rates of 0
    /// turn it off.
    pub fn set_random_faults(&self, seed: u64, throttle_rate: f64, internal_error_rate: f64) {
        self.shared.control().random =
            (throttle_rate > 0.0 || internal_error_rate > 0.0).then(|| RandomFaults {
                rng: StdRng::seed_from_u64(seed),
                throttle_rate,
                internal_error_rate,
            });
    }

    pub fn add_rule(&self, rule: Rule) {
        self.shared.control().rules.push((rule, 0));
    }

    /// Lets the next `k` calls through and holds every later one before it reaches moto,
    /// until [`FaultProxy::release_held`]. [`FaultProxy::wait_held`] says when the `k`
    /// calls have been answered: a crash test kills the process under test then, right
    /// after its K-th call. Replaces an earlier hold (its held calls are dropped).
    pub fn hold_after(&self, k: u64) {
        let mut control = self.shared.control();
        control.holds_made += 1;
        let first = control.next_seq + 1;
        control.hold = Some(Hold {
            first,
            last: first + k.max(1) - 1,
            answered: 0,
            id: control.holds_made,
        });
    }

    /// Waits until the calls [`FaultProxy::hold_after`] lets through have all been
    /// answered; `false` if that did not happen within `limit` (or nothing is armed).
    pub async fn wait_held(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let done = match &self.shared.control().hold {
                Some(hold) => hold.answered > hold.last - hold.first,
                None => return false,
            };
            if done {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The number of calls the armed hold has let through and that were answered.
    pub fn held_progress(&self) -> Option<u64> {
        self.shared.control().hold.as_ref().map(|h| h.answered)
    }

    /// Disarms the hold. Calls it held are dropped unanswered (logged with injected
    /// `"Held"`), never forwarded: they came from the process the test killed.
    pub fn release_held(&self) {
        self.shared.control().hold = None;
    }

    /// Hides each resource a later `Create*`/`RunInstances` call makes (VPC, subnet,
    /// internet gateway, route table, security group, instance) from `Describe*` answers
    /// for `delay`, as EC2's eventual consistency may. Zero turns it off.
    pub fn set_eventual_consistency(&self, delay: Duration) {
        let mut control = self.shared.control();
        control.consistency_delay = delay;
        if delay.is_zero() {
            control.hidden.clear();
        }
    }

    /// Ids currently hidden by [`FaultProxy::set_eventual_consistency`].
    pub fn hidden_ids(&self) -> Vec<String> {
        let now = Instant::now();
        let mut ids: Vec<String> = self
            .shared
            .control()
            .hidden
            .iter()
            .filter(|(_, until)| **until > now)
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    pub fn clear_rules(&self) {
        self.shared.control().rules.clear();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Owned here so that aborting this task also aborts every connection.
    let mut connections = JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!("fault proxy accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        let shared = shared.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(shared.clone(), req));
            // Errors here are client disconnects or our own `Fault::Drop`.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The error a service returns to make hyper close the connection unanswered.
#[derive(Debug)]
struct DroppedByFault;

impl std::fmt::Display for DroppedByFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by injected fault")
    }
}

impl std::error::Error for DroppedByFault {}

type ProxyResponse = Response<Full<Bytes>>;

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<ProxyResponse, DroppedByFault> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Err(DroppedByFault), // the client went away mid-body
    };
    let call = parse_call(&parts.uri, &parts.headers, &body);
    let mut headers = parts.headers.clone();
    for h in [
        header::HOST,
        header::CONNECTION,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
    ] {
        headers.remove(h);
    }
    if let Some(v) = shared
        .account_id
        .as_deref()
        .and_then(|a| HeaderValue::from_str(a).ok())
    {
        headers.insert(HeaderName::from_static(ACCOUNT_HEADER), v);
    }

    let at = Instant::now();
    let (seq, latency, needs_azs, held_by) = {
        let mut control = shared.control();
        control.next_seq += 1;
        let seq = control.next_seq;
        // Only ask moto about subnets when an AZ rule could otherwise fire.
        let needs_azs = control
            .rules
            .iter()
            .any(|(r, _)| r.availability_zone.is_some() && r.matches_static(&call, seq));
        let held_by = control.hold.as_ref().filter(|h| seq > h.last).map(|h| h.id);
        (seq, control.latency, needs_azs, held_by)
    };
    let record = |status: u16, injected: Option<String>| CallRecord {
        seq,
        action: call.action.clone(),
        region: call.region.clone(),
        status,
        injected,
        params: call.params.clone(),
        at,
        access_key: call.access_key.clone(),
    };
    if let Some(id) = held_by {
        // Held until released, then dropped: never forwarded.
        while shared.control().hold.as_ref().is_some_and(|h| h.id == id) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        shared.control().finish(record(0, Some("Held".to_string())));
        return Err(DroppedByFault);
    }
    let subnet_azs = if needs_azs {
        resolve_subnet_azs(&shared, &call, &headers).await
    } else {
        Vec::new()
    };
    let fault = choose_fault(&shared, &call, seq, &subnet_azs);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }

    match &fault {
        Some(Fault::Drop) => {
            shared.control().finish(record(0, Some("Drop".to_string())));
            return Err(DroppedByFault);
        }
        Some(Fault::Delay(d)) => tokio::time::sleep(*d).await,
        Some(f) => {
            if let Some((status, code, message)) = f.error() {
                shared.control().finish(record(status, Some(code.clone())));
                return Ok(error_response(status, &code, &message, seq));
            }
        }
        None => {}
    }

    let uri = format!(
        "{}{}",
        shared.upstream,
        parts.uri.path_and_query().map_or("/", |pq| pq.as_str())
    );
    let mut upstream_req = Request::builder().method(parts.method).uri(uri);
    if let Some(h) = upstream_req.headers_mut() {
        *h = headers;
    }
    let response = match upstream_req.body(Full::new(body)) {
        Ok(r) => forward(&shared, r, &call.action, seq).await,
        Err(e) => error_response(400, "ProxyBadRequest", &e.to_string(), seq),
    };
    shared
        .control()
        .finish(record(response.status().as_u16(), None));
    Ok(response)
}

/// Picks the fault for this call (rules first, then random faults) and
/// charges it against the rule's `times` budget.
fn choose_fault(shared: &Shared, call: &Call, seq: u64, subnet_azs: &[String]) -> Option<Fault> {
    let mut control = shared.control();
    let placement_az = call.param("Placement.AvailabilityZone");
    let hit = control.rules.iter_mut().find(|(rule, fired)| {
        rule.times.is_none_or(|n| *fired < n)
            && rule.matches_static(call, seq)
            && rule.availability_zone.as_ref().is_none_or(|az| {
                placement_az == Some(az.as_str()) || subnet_azs.iter().any(|s| s == az)
            })
    });
    if let Some((rule, fired)) = hit {
        *fired += 1;
        return Some(rule.fault.clone());
    }
    if call.action.is_empty() {
        return None;
    }
    let random = control.random.as_mut()?;
    let roll: f64 = random.rng.random();
    if roll < random.throttle_rate {
        Some(Fault::Throttle)
    } else if roll < random.throttle_rate + random.internal_error_rate {
        Some(Fault::InternalError)
    } else {
        None
    }
}

async fn forward(
    shared: &Shared,
    req: Request<Full<Bytes>>,
    action: &str,
    seq: u64,
) -> ProxyResponse {
    let response = match shared.client.request(req).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(
                "fault proxy: upstream {} failed for {action}: {e}",
                shared.upstream
            );
            return error_response(
                502,
                "ProxyUpstreamError",
                &format!("upstream failed: {e}"),
                seq,
            );
        }
    };
    let (mut parts, body) = response.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return error_response(
                502,
                "ProxyUpstreamError",
                &format!("upstream body: {e}"),
                seq,
            );
        }
    };
    if parts.status == StatusCode::INTERNAL_SERVER_ERROR && is_html(&body) {
        let text: String = html_text(&String::from_utf8_lossy(&body))
            .chars()
            .take(200)
            .collect();
        tracing::warn!("moto answered HTML 500 for {action}: {text}");
        let message = format!("moto answered HTML 500 for {action}: {text}");
        return error_response(400, "MotoUnsupported", &message, seq);
    }
    for h in [
        header::CONNECTION,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
    ] {
        parts.headers.remove(h);
    }
    let body = if parts.status.is_success() {
        apply_consistency(shared, action, body)
    } else {
        body
    };
    Response::from_parts(parts, Full::new(body))
}

/// The id element of the resources a create call makes, for eventual consistency.
fn created_id_tag(action: &str) -> Option<&'static str> {
    Some(match action {
        "CreateVpc" => "vpcId",
        "CreateSubnet" => "subnetId",
        "CreateInternetGateway" => "internetGatewayId",
        "CreateRouteTable" => "routeTableId",
        "CreateSecurityGroup" => "groupId",
        "RunInstances" => "instanceId",
        _ => return None,
    })
}

/// The id element of the items a describe call lists, for eventual consistency.
fn described_id_tag(action: &str) -> Option<&'static str> {
    Some(match action {
        "DescribeVpcs" => "vpcId",
        "DescribeSubnets" => "subnetId",
        "DescribeInternetGateways" => "internetGatewayId",
        "DescribeRouteTables" => "routeTableId",
        "DescribeSecurityGroups" => "groupId",
        "DescribeInstances" => "instanceId",
        _ => return None,
    })
}

/// Remembers what a create made, or hides what is still new from a describe.
fn apply_consistency(shared: &Shared, action: &str, body: Bytes) -> Bytes {
    let mut control = shared.control();
    let delay = control.consistency_delay;
    if delay.is_zero() {
        return body;
    }
    let xml = String::from_utf8_lossy(&body);
    if let Some(tag) = created_id_tag(action) {
        let until = Instant::now() + delay;
        for id in xml_tags(&xml, tag) {
            control.hidden.insert(id, until);
        }
        return body;
    }
    let Some(tag) = described_id_tag(action) else {
        return body;
    };
    let now = Instant::now();
    control.hidden.retain(|_, until| *until > now);
    if control.hidden.is_empty() {
        return body;
    }
    let hidden = &control.hidden;
    match strip_items(&xml, tag, &|id| hidden.contains_key(id)) {
        Some(stripped) => Bytes::from(stripped),
        None => body,
    }
}

/// Every `<tag>` value in `xml`, in order.
fn xml_tags(xml: &str, tag: &str) -> Vec<String> {
    let open = format!("<{tag}>");
    let mut values = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        rest = &rest[start + open.len()..];
        if let Some(end) = rest.find('<') {
            values.push(rest[..end].trim().to_string());
            rest = &rest[end..];
        }
    }
    values
}

/// `xml` without the `<item>` elements whose own `<id_tag>` child names a hidden id;
/// `None` when nothing is cut. Query-protocol XML has no CDATA, comments or attributes
/// that matter here, so a tag scanner is enough.
fn strip_items(xml: &str, id_tag: &str, hidden: &dyn Fn(&str) -> bool) -> Option<String> {
    struct Open<'a> {
        name: &'a str,
        start: usize,
        id: Option<&'a str>,
    }
    let mut stack: Vec<Open<'_>> = Vec::new();
    let mut cuts: Vec<(usize, usize)> = Vec::new();
    let mut pos = 0;
    while let Some(offset) = xml[pos..].find('<') {
        let start = pos + offset;
        let Some(len) = xml[start..].find('>') else {
            break;
        };
        let end = start + len + 1;
        let inner = &xml[start + 1..end - 1];
        pos = end;
        if inner.starts_with('?') || inner.starts_with('!') || inner.ends_with('/') {
            continue;
        }
        if let Some(name) = inner.strip_prefix('/') {
            let name = name.trim();
            // Pop to the matching open tag (tolerating unbalanced input).
            while let Some(open) = stack.pop() {
                if open.name == name {
                    if name == "item" && open.id.is_some_and(hidden) {
                        cuts.push((open.start, end));
                    }
                    break;
                }
            }
            continue;
        }
        let name = inner.split_whitespace().next().unwrap_or("");
        if name == id_tag
            && let Some(parent) = stack.last_mut()
            && parent.name == "item"
            && parent.id.is_none()
        {
            let text_end = xml[end..].find('<').map_or(xml.len(), |i| end + i);
            parent.id = Some(xml[end..text_end].trim());
        }
        stack.push(Open {
            name,
            start,
            id: None,
        });
    }
    if cuts.is_empty() {
        return None;
    }
    // Inner items close first; keep only the outermost cuts.
    cuts.sort();
    let mut out = String::with_capacity(xml.len());
    let mut copied = 0;
    for (start, end) in cuts {
        if start < copied {
            continue;
        }
        out.push_str(&xml[copied..start]);
        copied = end;
    }
    out.push_str(&xml[copied..]);
    Some(out)
}

/// The AZs of the subnets the call names, asking moto for uncached ones.
async fn resolve_subnet_azs(shared: &Shared, call: &Call, headers: &HeaderMap) -> Vec<String> {
    let mut azs = Vec::new();
    for subnet in call.subnet_ids() {
        let cached = shared.control().subnet_azs.get(subnet).cloned();
        let az = match cached {
            Some(az) => Some(az),
            None => describe_subnet_az(shared, subnet, headers).await,
        };
        if let Some(az) = az {
            shared
                .control()
                .subnet_azs
                .insert(subnet.to_string(), az.clone());
            azs.push(az);
        }
    }
    azs
}

async fn describe_subnet_az(shared: &Shared, subnet: &str, headers: &HeaderMap) -> Option<String> {
    let body: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("Action", "DescribeSubnets")
        .append_pair("Version", "2016-11-15")
        .append_pair("SubnetId.1", subnet)
        .finish();
    let mut req = Request::post(format!("{}/", shared.upstream)).header(
        header::CONTENT_TYPE,
        "application/x-www-form-urlencoded; charset=utf-8",
    );
    for name in [
        header::AUTHORIZATION,
        HeaderName::from_static(ACCOUNT_HEADER),
    ] {
        if let Some(v) = headers.get(&name) {
            req = req.header(name, v);
        }
    }
    let response = shared
        .client
        .request(req.body(Full::new(Bytes::from(body))).ok()?)
        .await
        .ok()?;
    let xml = response.into_body().collect().await.ok()?.to_bytes();
    let az = xml_tag(&String::from_utf8_lossy(&xml), "availabilityZone");
    if az.is_none() {
        tracing::warn!("fault proxy: could not resolve the AZ of subnet {subnet}");
    }
    az
}

fn parse_call(uri: &hyper::Uri, headers: &HeaderMap, body: &[u8]) -> Call {
    let mut params: Vec<(String, String)> = uri
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
    if is_form {
        params.extend(url::form_urlencoded::parse(body).into_owned());
    }
    let action = params
        .iter()
        .find(|(n, _)| n == "Action")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let region = authorization
        .and_then(region_from_authorization)
        .unwrap_or_else(|| "unknown".to_string());
    let access_key = authorization
        .and_then(access_key_from_authorization)
        .unwrap_or_default();
    Call {
        action,
        region,
        access_key,
        params,
    }
}

/// `... Credential=AKID/20261121/us-east-1/ec2/aws4_request, ...` -> `AKID`.
fn access_key_from_authorization(auth: &str) -> Option<String> {
    let scope = auth.split("Credential=").nth(1)?;
    scope
        .split('/')
        .next()
        .filter(|k| !k.is_empty())
        .map(str::to_string)
}

/// `... Credential=AKID/20261121/us-east-1/ec2/aws4_request, ...` -> `us-east-1`.
fn region_from_authorization(auth: &str) -> Option<String> {
    let scope = auth.split("Credential=").nth(1)?;
    let scope = scope.split([',', ' ']).next()?;
    scope
        .split('/')
        .nth(2)
        .filter(|r| !r.is_empty())
        .map(str::to_string)
}

fn error_response(status: u16, code: &str, message: &str, seq: u64) -> ProxyResponse {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Errors><Error><Code>{}</Code>\
         <Message>{}</Message></Error></Errors><RequestID>{}</RequestID></Response>",
        xml_escape(code),
        xml_escape(message),
        format_args!("00000000-0000-4000-8000-{seq:012}"),
    );
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/xml;charset=UTF-8"),
    );
    response
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn xml_tag(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find('<')?;
    Some(xml[start..end].to_string())
}

fn is_html(body: &[u8]) -> bool {
    let head = String::from_utf8_lossy(&body[..body.len().min(64)])
        .trim_start()
        .to_ascii_lowercase();
    head.starts_with("<!doctype") || head.starts_with("<html")
}

/// The readable text of an HTML page: tags dropped, whitespace collapsed.
fn html_text(html: &str) -> String {
    let mut text = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => {
                in_tag = true;
                text.push(' ');
            }
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_is_read_from_the_credential_scope() {
        let auth = "AWS4-HMAC-SHA256 Credential=AKID/20261121/eu-west-2/ec2/aws4_request, \
                    SignedHeaders=host, Signature=abc";
        assert_eq!(
            region_from_authorization(auth).as_deref(),
            Some("eu-west-2")
        );
        assert_eq!(region_from_authorization("Bearer x"), None);
    }

    #[test]
    fn access_key_is_read_from_the_credential_scope() {
        let auth = "AWS4-HMAC-SHA256 Credential=AKID/20261121/eu-west-2/ec2/aws4_request, \
                    SignedHeaders=host, Signature=abc";
        assert_eq!(access_key_from_authorization(auth).as_deref(), Some("AKID"));
        assert_eq!(access_key_from_authorization("Bearer x"), None);
    }

    #[test]
    fn strip_items_cuts_only_items_whose_own_id_is_hidden() {
        let xml = "<?xml version=\"1.0\"?><R><subnetSet>\
                   <item><subnetId>subnet-1</subnetId><vpcId>vpc-1</vpcId>\
                   <tagSet><item><key>k</key></item></tagSet></item>\
                   <item><subnetId>subnet-2</subnetId><vpcId>vpc-1</vpcId></item>\
                   </subnetSet></R>";
        let hide = |id: &str| id == "subnet-1" || id == "vpc-1";
        let out = strip_items(xml, "subnetId", &hide).expect("something cut");
        assert!(!out.contains("subnet-1"), "{out}");
        assert!(out.contains("<subnetId>subnet-2</subnetId><vpcId>vpc-1</vpcId>"));
        assert!(strip_items(xml, "subnetId", &|_: &str| false).is_none());
        // Nested items: an instance inside a reservation.
        let xml = "<reservationSet><item><reservationId>r-1</reservationId><instancesSet>\
                   <item><instanceId>i-1</instanceId><groupSet><item><groupId>sg-1</groupId>\
                   </item></groupSet></item><item><instanceId>i-2</instanceId></item>\
                   </instancesSet></item></reservationSet>";
        let out = strip_items(xml, "instanceId", &|id: &str| id == "i-1").expect("cut");
        assert!(
            !out.contains("i-1") && out.contains("i-2") && out.contains("r-1"),
            "{out}"
        );
        assert_eq!(xml_tags(xml, "instanceId"), vec!["i-1", "i-2"]);
    }

    #[test]
    fn html_is_reduced_to_text() {
        let page = "<!doctype html>\n<html lang=en>\n<title>500 Internal Server Error</title>\n<h1>Oops</h1>";
        assert!(is_html(page.as_bytes()));
        assert!(!is_html(b"<?xml version=\"1.0\"?><Response/>"));
        assert_eq!(html_text(page), "500 Internal Server Error Oops");
    }

    #[test]
    fn xml_tag_finds_the_first_exact_tag() {
        let xml = "<item><availabilityZoneId>use1-az1</availabilityZoneId>\
                   <availabilityZone>us-east-1a</availabilityZone></item>";
        assert_eq!(
            xml_tag(xml, "availabilityZone").as_deref(),
            Some("us-east-1a")
        );
    }
}
