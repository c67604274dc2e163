//! A recording hop between the server and the testkit `FaultProxy`: it notes when each AWS
//! call started and ended (the `FaultProxy` log has the order and the action, not the
//! times), which gives the sequential round trips on the critical path, and it hands the
//! simulated fleet every successful `RunInstances` with its user data.
//!
//! server → `TimingProxy` (this) → `FaultProxy` (latency L, per-action counts) → moto.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// One AWS call as seen by the recording hop.
#[derive(Debug, Clone)]
pub struct TimedCall {
    pub action: String,
    /// Seconds since the proxy started.
    pub start: f64,
    pub end: f64,
    pub status: u16,
    /// For `RunInstances` only: the decoded user data and the instance count.
    pub launch: Option<(String, u32)>,
}

#[derive(Default)]
struct Log {
    calls: Vec<TimedCall>,
}

/// See the module docs. Stops when dropped.
pub struct TimingProxy {
    addr: SocketAddr,
    epoch: Instant,
    log: Arc<Mutex<Log>>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for TimingProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimingProxy")
            .field("addr", &self.addr)
            .finish()
    }
}

impl Drop for TimingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TimingProxy {
    pub async fn start(upstream: String) -> anyhow::Result<TimingProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let epoch = Instant::now();
        let log = Arc::new(Mutex::new(Log::default()));
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let shared = (
            upstream.trim_end_matches('/').to_owned(),
            client,
            log.clone(),
            epoch,
        );
        let shared = Arc::new(shared);
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                while connections.try_join_next().is_some() {}
                let shared = shared.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { forward(&shared.0, &shared.1, &shared.2, shared.3, req).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(TimingProxy {
            addr,
            epoch,
            log,
            task,
        })
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Seconds since the proxy started, of an instant.
    pub fn at(&self, instant: Instant) -> f64 {
        instant.saturating_duration_since(self.epoch).as_secs_f64()
    }

    pub fn len(&self) -> usize {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .calls
            .len()
    }

    /// Calls from index `from` on.
    pub fn calls_from(&self, from: usize) -> Vec<TimedCall> {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.calls
            .get(from..)
            .map(<[TimedCall]>::to_vec)
            .unwrap_or_default()
    }
}

async fn forward(
    upstream: &str,
    client: &Client<HttpConnector, Full<Bytes>>,
    log: &Mutex<Log>,
    epoch: Instant,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let start = epoch.elapsed().as_secs_f64();
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let params: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let param = |name: &str| {
        params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let action = param("Action").unwrap_or_default();
    let uri = format!(
        "{upstream}{}",
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut request = Request::builder().method(parts.method).uri(uri);
    if let Some(headers) = request.headers_mut() {
        *headers = parts.headers;
        headers.remove(hyper::header::HOST);
    }
    let (status, response) = match request.body(Full::new(body.clone())) {
        Ok(request) => match client.request(request).await {
            Ok(response) => {
                let (parts, body) = response.into_parts();
                let bytes = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                (
                    parts.status.as_u16(),
                    Response::from_parts(parts, Full::new(bytes)),
                )
            }
            Err(e) => (502, bad_gateway(&e.to_string())),
        },
        Err(e) => (502, bad_gateway(&e.to_string())),
    };
    let launch = (action == "RunInstances" && status == 200)
        .then(|| {
            let data = param("UserData")?;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .ok()?;
            let count = param("MaxCount")?.parse().ok()?;
            Some((String::from_utf8_lossy(&decoded).into_owned(), count))
        })
        .flatten();
    let end = epoch.elapsed().as_secs_f64();
    log.lock()
        .unwrap_or_else(|p| p.into_inner())
        .calls
        .push(TimedCall {
            action,
            start,
            end,
            status,
            launch,
        });
    Ok(response)
}

fn bad_gateway(message: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(message.to_owned())));
    *response.status_mut() = hyper::StatusCode::BAD_GATEWAY;
    response
}

/// The number of sequential round trips: the longest chain of calls each of which started
/// after the previous one had answered.
pub fn critical_path(calls: &[(f64, f64)]) -> usize {
    longest_chain(calls, |_| 1.0).round() as usize
}

/// The AWS time on the critical path: the chain of calls that ran one after another with the
/// largest total time inside the calls (latency plus the emulator's own service time). A
/// control plane that only ever waited for AWS would take exactly this long, so wall time
/// over it is the control plane's own overhead.
pub fn critical_path_seconds(calls: &[(f64, f64)]) -> f64 {
    longest_chain(calls, |(start, end)| end - start)
}

/// The heaviest chain of calls each starting after the previous one ended, each weighing
/// `weight(call)`.
fn longest_chain(calls: &[(f64, f64)], weight: impl Fn((f64, f64)) -> f64) -> f64 {
    let mut sorted: Vec<(f64, f64)> = calls.to_vec();
    sorted.sort_by(|a, b| a.1.total_cmp(&b.1));
    let mut chain: Vec<f64> = Vec::with_capacity(sorted.len());
    for (i, &call) in sorted.iter().enumerate() {
        let before = (0..i)
            .filter(|&j| sorted[j].1 <= call.0)
            .map(|j| chain[j])
            .fold(0.0, f64::max);
        chain.push(before + weight(call));
    }
    chain.into_iter().fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_critical_path_time_sums_the_longest_sequential_chain() {
        assert_eq!(critical_path_seconds(&[]), 0.0);
        // 1.0 then 0.5 in sequence beats a lone 1.4 overlapping both.
        let calls = [(0.0, 1.0), (1.0, 1.5), (0.0, 1.4)];
        assert!((critical_path_seconds(&calls) - 1.5).abs() < 1e-9);
        // Concurrent calls count once: the slowest of the round.
        let calls = [(0.0, 0.2), (0.0, 0.3), (0.4, 0.5)];
        assert!((critical_path_seconds(&calls) - 0.4).abs() < 1e-9);
    }

    #[test]
    fn the_critical_path_counts_sequential_rounds() {
        assert_eq!(critical_path(&[]), 0);
        // Three concurrent calls, then two concurrent ones, then one: three rounds.
        let calls = [
            (0.0, 1.0),
            (0.0, 1.1),
            (0.1, 0.9),
            (1.2, 2.0),
            (1.15, 2.1),
            (2.2, 3.0),
        ];
        assert_eq!(critical_path(&calls), 3);
        // A long call overlapping two short sequential ones: two rounds.
        assert_eq!(critical_path(&[(0.0, 3.0), (0.0, 1.0), (1.0, 2.0)]), 2);
    }
}
