//! The websockets of the audit subsystem: the events stream (§6,
//! `/api/audit/v1/[{ns}/]events[/]`) and an action's logs (§2.2,
//! `/api/audit/v1/[{ns}/]action/{uuid}/logs/?follow=&tail=`).
//!
//! Design decisions:
//! * Both are routes of the one HTTP dispatcher, so a handshake is authenticated (Basic, 401
//!   before any upgrade — the clients turn that into "Not authorized" and exit 2) and
//!   namespace-checked exactly like REST; [`upgrade`] only takes over once that is done.
//! * Errors before the upgrade are answered as the REST routes answer them
//!   ([`crate::api_error`]).
//! * Events come from the store's broadcast bus ([`crate::events`]). The listener is
//!   subscribed before the handshake is answered, so nothing published after a client's
//!   `101` is missed. Publishers never wait for a socket, so a listener that falls more than
//!   the bus's capacity behind loses events — and is told so: it gets a `{"type": "missed",
//!   "count": N, …}` frame where the events were lost, saying to list again what it
//!   follows, and the stream goes on. A client therefore either sees every event or knows
//!   that it did not.
//! * The first frame is `{"type": "auth", ...}` (documented by Tutum; the Python client
//!   drops it), then one JSON text frame per event. Pings are answered by the websocket
//!   library as long as the socket is read, which both loops always do.
//! * Action logs are a single text column appended to line by line, so `follow` polls the
//!   action every [`FOLLOW_POLL`] and sends what was added, until the action ends (Success,
//!   Failed or Canceled); then the rest is sent and the socket closed with 1000. Lines that
//!   were already there carry the action's start time (no per-line time is stored).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use flotilla_api::{self as api, action_state, date};
use flotilla_core::cloud::Cloud;
use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;

use std::collections::HashMap;
use std::time::Instant;

use crate::app::{App, AppError};
use crate::authz::Principal;
use crate::events::Filter;
use crate::routes::Route;

/// How often a followed action is re-read for new log lines.
pub const FOLLOW_POLL: Duration = Duration::from_millis(250);
/// Lines sent when the client gives no `tail` (the documented default).
pub const DEFAULT_TAIL: usize = 300;

/// Answers the handshake of a websocket route (auth already checked); `None` for a route
/// that is not a websocket.
pub async fn upgrade<C: Cloud + 'static>(
    app: &Arc<App<C>>,
    route: &Route,
    parts: &mut Parts,
    principal: &Principal,
    org: Option<String>,
    query: &str,
) -> Option<Response> {
    let (Route::Events | Route::ActionLogs(_)) = route else {
        return None;
    };
    let upgrade = match WebSocketUpgrade::from_request_parts(parts, &()).await {
        Ok(upgrade) => upgrade,
        Err(rejection) => return Some(rejection.into_response()),
    };
    Some(match route {
        Route::ActionLogs(uuid) => {
            let action = match app.action(uuid).await {
                Ok(action) => action,
                Err(error) => return Some(error.into_response()),
            };
            let options = match LogOptions::from_query(query) {
                Ok(options) => options,
                Err(error) => return Some(error.into_response()),
            };
            let app = app.clone();
            upgrade.on_upgrade(move |socket| action_logs(socket, app, action, options))
        }
        _ => {
            let filter = Filter::from_query(query);
            let events = app.events().subscribe();
            let visible = Visible::new(app.clone(), principal.clone(), org);
            upgrade.on_upgrade(move |socket| events_stream(socket, events, filter, visible))
        }
    })
}

/// Sends one JSON text frame; false when the client is gone.
async fn send_json<T: Serialize>(socket: &mut WebSocket, value: &T) -> bool {
    match serde_json::to_string(value) {
        Ok(text) => socket.send(Message::Text(text.into())).await.is_ok(),
        Err(_) => true,
    }
}

/// What the events stream does with one thing received from the bus.
#[derive(Debug, Clone, PartialEq)]
enum Next {
    Send(serde_json::Value),
    Skip,
    Stop,
}

/// The frame that tells a listener it lost events and must resync.
#[derive(Debug, Serialize)]
struct MissedFrame {
    #[serde(rename = "type")]
    kind: &'static str,
    count: u64,
    message: String,
    datetime: String,
}

/// An event that passes the filter is sent; a lag becomes a `missed` frame (whatever the
/// filter: the lost events may have matched it); a closed bus ends the stream.
fn next_frame(received: Result<Arc<api::Event>, RecvError>, filter: &Filter) -> Next {
    match received {
        Ok(event) if event.kind == crate::events::MISSED_KIND => {
            let frame = MissedFrame {
                kind: "missed",
                count: 0,
                message: "events of other replicas may have been missed (this replica's \
                    database listener reconnected); list the resources it follows again to \
                    resync"
                    .to_owned(),
                datetime: event.datetime.clone(),
            };
            serde_json::to_value(&frame).map_or(Next::Skip, Next::Send)
        }
        Ok(event) if filter.matches(&event) => {
            serde_json::to_value(event.as_ref()).map_or(Next::Skip, Next::Send)
        }
        Ok(_) => Next::Skip,
        Err(RecvError::Lagged(count)) => {
            tracing::warn!(
                count,
                "an events listener fell behind and is told to resync"
            );
            let frame = MissedFrame {
                kind: "missed",
                count,
                message: format!(
                    "this listener fell behind and missed {count} events; list the resources it follows again to resync"
                ),
                datetime: date::format_iso_unix(date::now_unix()),
            };
            serde_json::to_value(&frame).map_or(Next::Skip, Next::Send)
        }
        Err(RecvError::Closed) => Next::Stop,
    }
}

/// True when the client closed or the connection broke; other frames (pings, which the
/// library answers, and anything a client sends) are ignored.
fn client_left(incoming: Option<Result<Message, axum::Error>>) -> bool {
    matches!(incoming, None | Some(Err(_)) | Some(Ok(Message::Close(_))))
}

#[derive(Serialize)]
struct AuthFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    user: &'a str,
    datetime: String,
}

/// Which events a listener may see (`authz::sees_event`), with the answers cached per
/// object for [`RECHECK`]: then the principal is loaded again, so a revoked grant or a
/// removed user stops the flow within that time, and the stream ends if the user is gone.
struct Visible<C> {
    app: Arc<App<C>>,
    principal: Principal,
    /// The organization of the stream's namespace (`/api/audit/v1/<org>/events`), if any.
    org: Option<String>,
    seen: HashMap<String, bool>,
    checked: Instant,
}

/// How long a listener's visibility answers are trusted.
pub const RECHECK: Duration = Duration::from_secs(5);

impl<C: Cloud + 'static> Visible<C> {
    fn new(app: Arc<App<C>>, principal: Principal, org: Option<String>) -> Self {
        Visible {
            app,
            principal,
            org,
            seen: HashMap::new(),
            checked: Instant::now(),
        }
    }

    /// `None` when the listener's user no longer exists (the stream ends).
    async fn sees(&mut self, event: &api::Event) -> Option<bool> {
        if self.principal.admin && self.org.is_none() && self.checked.elapsed() < RECHECK {
            return Some(true);
        }
        if self.checked.elapsed() >= RECHECK {
            self.principal = self
                .app
                .principal(&self.principal.username)
                .await
                .ok()
                .flatten()?;
            self.seen.clear();
            self.checked = Instant::now();
        }
        let key = format!("{}|{}", event.resource_uri, event.parents.join(","));
        if let Some(seen) = self.seen.get(&key) {
            return Some(*seen);
        }
        let seen = self
            .app
            .sees_event(&self.principal, event, self.org.as_deref())
            .await
            .unwrap_or(false);
        self.seen.insert(key, seen);
        Some(seen)
    }
}

async fn events_stream<C: Cloud + 'static>(
    mut socket: WebSocket,
    mut events: tokio::sync::broadcast::Receiver<Arc<api::Event>>,
    filter: Filter,
    mut visible: Visible<C>,
) {
    let username = visible.principal.username.clone();
    let auth = AuthFrame {
        kind: "auth",
        user: &username,
        datetime: date::format_iso_unix(date::now_unix()),
    };
    if !send_json(&mut socket, &auth).await {
        return;
    }
    loop {
        tokio::select! {
            received = events.recv() => {
                let received = match received {
                    Ok(event) if event.kind == crate::events::MISSED_KIND => Ok(event),
                    Ok(event) => match visible.sees(&event).await {
                        Some(true) => Ok(event),
                        Some(false) => continue,
                        None => break,
                    },
                    Err(error) => Err(error),
                };
                match next_frame(received, &filter) {
                Next::Send(frame) => {
                    if !send_json(&mut socket, &frame).await {
                        return;
                    }
                }
                Next::Skip => {}
                // The server is stopping.
                Next::Stop => break,
            }},
            incoming = socket.recv() => {
                if client_left(incoming) {
                    return;
                }
            }
        }
    }
    close(socket).await;
}

async fn close(mut socket: WebSocket) {
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code: close_code::NORMAL,
            reason: "".into(),
        })))
        .await;
}

/// `follow` and `tail` of the logs websocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogOptions {
    pub follow: bool,
    pub tail: usize,
}

impl LogOptions {
    pub fn from_query(query: &str) -> Result<LogOptions, AppError> {
        let mut options = LogOptions {
            follow: true,
            tail: DEFAULT_TAIL,
        };
        for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
            match name.as_ref() {
                "follow" => {
                    options.follow = match value.to_ascii_lowercase().as_str() {
                        "true" | "1" | "yes" => true,
                        "false" | "0" | "no" => false,
                        _ => {
                            return Err(AppError::BadRequest(format!(
                                "follow: '{value}' is not true or false"
                            )));
                        }
                    }
                }
                "tail" => {
                    options.tail = value.trim().parse().map_err(|_| {
                        AppError::BadRequest(format!("tail: '{value}' is not a whole number"))
                    })?;
                }
                _ => {}
            }
        }
        Ok(options)
    }
}

fn finished(state: &str) -> bool {
    matches!(
        state,
        action_state::SUCCESS | action_state::FAILED | action_state::CANCELED
    )
}

fn log_frame(line: &str, timestamp: i64) -> api::LogFrame {
    api::LogFrame {
        kind: "log".into(),
        log: line.to_owned(),
        timestamp,
    }
}

/// The complete lines of `logs` after byte `from`, and where the next read starts. A
/// trailing partial line is left for later unless `all`.
fn new_lines(logs: &str, from: usize, all: bool) -> (Vec<&str>, usize) {
    let Some(fresh) = logs.get(from..) else {
        return (Vec::new(), from);
    };
    let complete = if all {
        fresh.len()
    } else {
        fresh.rfind('\n').map_or(0, |i| i + 1)
    };
    let lines = fresh[..complete]
        .split('\n')
        .filter(|line| !line.is_empty())
        .collect();
    (lines, from + complete)
}

async fn action_logs<C: Cloud + 'static>(
    mut socket: WebSocket,
    app: Arc<App<C>>,
    action: api::Action,
    options: LogOptions,
) {
    let started = action
        .start_date
        .as_deref()
        .and_then(|d| date::parse(d).ok())
        .map_or_else(date::now_unix, |d| d.unix_timestamp());
    let done = finished(&action.state);
    let (lines, mut offset) = new_lines(&action.logs, 0, done);
    let skip = lines.len().saturating_sub(options.tail);
    for line in &lines[skip..] {
        if !send_json(&mut socket, &log_frame(line, started)).await {
            return;
        }
    }
    if done || !options.follow {
        close(socket).await;
        return;
    }
    loop {
        tokio::select! {
            () = tokio::time::sleep(FOLLOW_POLL) => {}
            incoming = socket.recv() => {
                if client_left(incoming) {
                    return;
                }
                continue;
            }
        }
        let current = match app.action(&action.uuid).await {
            Ok(current) => current,
            Err(error) => {
                tracing::warn!(action = action.uuid, %error, "cannot follow an action's logs");
                break;
            }
        };
        let done = finished(&current.state);
        let (lines, next) = new_lines(&current.logs, offset, done);
        offset = next;
        let now = date::now_unix();
        for line in lines {
            if !send_json(&mut socket, &log_frame(line, now)).await {
                return;
            }
        }
        if done {
            break;
        }
    }
    close(socket).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{EventBus, Pending};

    #[tokio::test]
    async fn a_listener_that_falls_behind_is_told_how_many_events_it_missed() {
        let bus = EventBus::new();
        let mut listener = bus.subscribe();
        let filter = Filter::default();
        for i in 0..crate::events::CAPACITY + 3 {
            let mut pending = Pending::default();
            pending.node(
                crate::events::Verb::Update,
                &format!("n{i}"),
                None,
                "Deployed",
            );
            bus.publish_all(pending);
        }
        let Next::Send(first) = next_frame(listener.recv().await, &filter) else {
            panic!("a frame");
        };
        assert_eq!(first["type"], "missed", "{first}");
        assert_eq!(first["count"], 3, "{first}");
        assert!(
            first["message"]
                .as_str()
                .is_some_and(|m| m.contains("resync"))
        );
        // Then the stream goes on with what it still has.
        let Next::Send(next) = next_frame(listener.recv().await, &filter) else {
            panic!("a frame");
        };
        assert_eq!(next["type"], "node", "{next}");
        drop(bus);
    }

    #[test]
    fn log_options_default_to_following_the_last_300_lines() {
        assert_eq!(
            LogOptions::from_query("").expect("ok"),
            LogOptions {
                follow: true,
                tail: 300
            }
        );
        assert_eq!(
            LogOptions::from_query("follow=false&tail=5").expect("ok"),
            LogOptions {
                follow: false,
                tail: 5
            }
        );
        assert!(LogOptions::from_query("follow=maybe").is_err());
        assert!(LogOptions::from_query("tail=-1").is_err());
    }

    #[test]
    fn only_complete_lines_are_sent_until_the_end() {
        let logs = "one\ntwo\nthr";
        assert_eq!(new_lines(logs, 0, false), (vec!["one", "two"], 8));
        assert_eq!(new_lines(logs, 8, false), (vec![], 8));
        assert_eq!(new_lines(logs, 8, true), (vec!["thr"], 11));
        assert_eq!(new_lines(logs, 99, true), (vec![], 99));
    }
}
