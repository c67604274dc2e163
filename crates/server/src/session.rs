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
//! * **Sessions live in the database** (`app::sessions`, table `dashboard_sessions`), so
//!   every replica behind a load balancer knows every session: a browser whose next
//!   request reaches another replica stays logged in, and a logout on one replica ends the
//!   session on all of them at their next request (no replica caches a session). The
//!   database keeps only the id's SHA-256, so a copy of it opens no session, and no CSRF
//!   token (see below). Each request with the cookie costs one primary-key read besides the
//!   credential check; reads never write. They survive a restart. At most [`MAX_SESSIONS`]
//!   are held: at each login the expired ones go first, then the oldest.
//! * **CSRF**: every session has its own token, answered by `POST /session` and
//!   `GET /session` (readable only by a page of the server's own origin: the API sends no
//!   CORS headers). A cookie-authenticated request that changes something (any method but
//!   GET/HEAD) must carry it in `X-CSRF-Token`, compared in constant time, or it is refused
//!   with 403; so is a cookie-authenticated request whose `Origin` is another site (this also
//!   covers the events websocket's handshake, a GET). SameSite=Strict already stops most
//!   forgeries; the token is the defence that does not depend on the browser. Requests with
//!   Basic credentials need no token: a browser never attaches those on its own. The token
//!   is derived from the session's id (a labelled SHA-256 of it, `app::sessions`), not
//!   stored: every request that may ask for it carries the cookie, so any replica computes
//!   it again, and the database holds neither the id nor the token.
//! * **A session lives as long as its credential.** It remembers how it was opened (the
//!   API key's id, a fingerprint of the password hash, or the directory) and every request
//!   with the cookie checks that this still holds (`App::still_holds`, one indexed query):
//!   revoking the key, changing the password, or removing or disabling the user ends the
//!   session at its next request — the same promptness as a revoked key over Basic.
//! * A 401 for a request that came with a session cookie names the `FlotillaSession` scheme,
//!   not `Basic`, so that a browser shows the dashboard's login form rather than its own
//!   Basic-auth prompt.

use axum::http::{HeaderMap, header};
use subtle::ConstantTimeEq;

pub use crate::app::sessions::{Created, LIFETIME, MAX_SESSIONS, Session};

/// The cookie's name.
pub const COOKIE: &str = "flotilla_session";
/// The header that carries the CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";

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
        let session = Session {
            username: "admin".into(),
            via: crate::app::SignedInWith::Directory,
            csrf_token: "ab".repeat(32),
            expires_at: 0,
        };
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
