//! The web dashboard's sessions: a cookie for the browser, a CSRF token for its changes.
//!
//! Design decisions:
//! * **Login is the API's login.** `POST /session` takes the same user and API key (or
//!   password) as HTTP Basic, checked by [`crate::app::App::login`] through the same failed-login
//!   throttle (`crate::login`); a session then carries exactly that user, so the dashboard has
//!   the API's authorization and nothing more. The dashboard's JavaScript calls the very same
//!   API paths; the dispatcher (`http`) accepts a valid session cookie as an alternative to
//!   Basic.
//! * **The cookie** (`flotilla_session`) is a random 256-bit id, `HttpOnly` (scripts cannot
//!   read it), `SameSite=Strict` (other sites' pages never make the browser send it),
//!   `Path=/`, `Max-Age` of [`LIFETIME`], and `Secure` when the server is served over TLS.
//!   The server keeps only the id's SHA-256, so a memory dump does not hold usable ids; the
//!   sessions live in memory and end with the process (logging in again is cheap; nothing
//!   needs a migration). At most [`MAX_SESSIONS`] are held: expired ones go first, then the
//!   oldest.
//! * **CSRF**: every session has its own random token, answered by `POST /session` and
//!   `GET /session` (readable only by a page of the server's own origin: the API sends no
//!   CORS headers). A cookie-authenticated request that changes something (any method but
//!   GET/HEAD) must carry it in `X-CSRF-Token`, compared in constant time, or it is refused
//!   with 403; so is a cookie-authenticated request whose `Origin` is another site (this also
//!   covers the events websocket's handshake, a GET). SameSite=Strict already stops most
//!   forgeries; the token is the defence that does not depend on the browser. Requests with
//!   Basic credentials need no token: a browser never attaches those on its own.
//! * **A session lives as long as its credential.** It remembers how it was opened (the
//!   API key's id, a fingerprint of the password hash, or the directory) and every request
//!   with the cookie checks that this still holds (`App::still_holds`, one indexed query):
//!   revoking the key, changing the password, or removing or disabling the user ends the
//!   session at its next request — the same promptness as a revoked key over Basic.
//! * A 401 for a request that came with a session cookie names the `FlotillaSession` scheme,
//!   not `Basic`, so that a browser shows the dashboard's login form rather than its own
//!   Basic-auth prompt.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, header};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::app::SignedInWith;

/// The cookie's name.
pub const COOKIE: &str = "flotilla_session";
/// The header that carries the CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a session lasts after login.
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions held at most.
pub const MAX_SESSIONS: usize = 10_000;

/// One logged-in browser.
#[derive(Clone, PartialEq, Eq)]
pub struct Session {
    pub username: String,
    /// The credential the session was opened with; the session ends when it stops holding
    /// (`http` asks `App::still_holds` on every request).
    pub via: SignedInWith,
    pub csrf_token: String,
    expires: Instant,
}

// Secrets stay out of logs: the ids and tokens are never printed.
impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Created {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Created")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = self.by_hash.lock().map(|s| s.len()).unwrap_or(0);
        f.debug_struct("Sessions").field("held", &held).finish()
    }
}

/// A new session: the cookie's value (the only copy of the id) and the session.
pub struct Created {
    pub id: String,
    pub session: Session,
}

/// The sessions of this process, by the SHA-256 of their id.
#[derive(Default)]
pub struct Sessions {
    by_hash: Mutex<HashMap<[u8; 32], Session>>,
}

fn hash(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

fn random_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

impl Sessions {
    /// Starts a session for `username` (already authenticated).
    pub fn create(&self, username: &str, via: SignedInWith, now: Instant) -> Created {
        let id = random_token();
        let session = Session {
            username: username.to_owned(),
            via,
            csrf_token: random_token(),
            expires: now + LIFETIME,
        };
        let mut sessions = self.by_hash.lock().unwrap_or_else(|e| e.into_inner());
        if sessions.len() >= MAX_SESSIONS {
            sessions.retain(|_, s| s.expires > now);
        }
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| *k)
        {
            sessions.remove(&oldest);
        }
        sessions.insert(hash(&id), session.clone());
        Created { id, session }
    }

    /// The live session of cookie value `id`.
    pub fn get(&self, id: &str, now: Instant) -> Option<Session> {
        let mut sessions = self.by_hash.lock().unwrap_or_else(|e| e.into_inner());
        let key = hash(id);
        match sessions.get(&key) {
            Some(session) if session.expires > now => Some(session.clone()),
            Some(_) => {
                sessions.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Ends the session of cookie value `id`; whether there was one.
    pub fn remove(&self, id: &str) -> bool {
        let mut sessions = self.by_hash.lock().unwrap_or_else(|e| e.into_inner());
        sessions.remove(&hash(id)).is_some()
    }
}

/// The session cookie's value in a request, if it carries one.
pub fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim().to_owned())
        .filter(|value| !value.is_empty())
}

/// The `Set-Cookie` value that stores `id` (or, with `None`, deletes the cookie).
pub fn set_cookie(id: Option<&str>, secure: bool) -> String {
    let (value, max_age) = match id {
        Some(id) => (id, LIFETIME.as_secs()),
        None => ("", 0),
    };
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}")
}

/// Whether a cookie-authenticated request may change something: it carries the session's
/// CSRF token.
pub fn csrf_ok(headers: &HeaderMap, session: &Session) -> bool {
    headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|sent| bool::from(sent.as_bytes().ct_eq(session.csrf_token.as_bytes())))
}

/// Whether the request's `Origin`, if any, is the server's own (its `Host`).
pub fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let origin_host = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .unwrap_or("");
    origin_host.eq_ignore_ascii_case(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn sessions_expire_and_end() {
        let sessions = Sessions::default();
        let now = Instant::now();
        let created = sessions.create("admin", SignedInWith::Directory, now);
        assert_eq!(created.id.len(), 64);
        assert_ne!(created.id, created.session.csrf_token);
        let found = sessions.get(&created.id, now).expect("live");
        assert_eq!(found.username, "admin");
        assert!(sessions.get("not-an-id", now).is_none());
        assert!(
            sessions.get(&created.id, now + LIFETIME).is_none(),
            "expired"
        );
        let again = sessions.create("admin", SignedInWith::Directory, now);
        assert!(sessions.remove(&again.id));
        assert!(sessions.get(&again.id, now).is_none(), "logged out");
    }

    #[test]
    fn cookies_csrf_and_origin() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; flotilla_session=abc; b=2"),
        );
        assert_eq!(cookie(&headers).as_deref(), Some("abc"));
        let set = set_cookie(Some("abc"), true);
        for part in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
            assert!(set.contains(part), "{set}");
        }
        assert!(!set_cookie(Some("abc"), false).contains("Secure"));
        assert!(set_cookie(None, false).contains("Max-Age=0"));
        let sessions = Sessions::default();
        let session = sessions
            .create("admin", SignedInWith::Directory, Instant::now())
            .session;
        assert!(!csrf_ok(&headers, &session));
        headers.insert(
            CSRF_HEADER,
            HeaderValue::from_str(&session.csrf_token).expect("hex"),
        );
        assert!(csrf_ok(&headers, &session));
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(same_origin(&headers));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8080"),
        );
        assert!(same_origin(&headers));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(!same_origin(&headers));
    }
}
