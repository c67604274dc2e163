//! The web dashboard's assets: one page, one script, one style sheet, compiled into the
//! binary with `include_str!` from `crates/server/dashboard/` and served at `/`,
//! `/dashboard.js` and `/dashboard.css` (public routes of the route table: they hold no
//! data; everything the page shows comes from the API with the session cookie, `session`).
//!
//! Design decisions:
//! * **No build step, no CDN.** The dashboard is plain HTML, CSS and JavaScript (ES2020,
//!   no framework): what is in the repository is what the browser runs, `cargo build` is
//!   the whole build, and the binary works on a machine with no internet. A few hundred
//!   lines of DOM code do not justify a Node toolchain in the build of a Rust binary.
//! * **The API is the dashboard's only back end.** The script calls the Docker Cloud API
//!   paths and the events websocket like any client; the server has no dashboard-only data
//!   endpoints, so the dashboard can do nothing the API does not allow.
//! * Answers carry a strict Content-Security-Policy (only the server's own scripts, styles
//!   and connections; no inline script), `X-Frame-Options: DENY` against clickjacking and
//!   `Cache-Control: no-cache`, so an upgraded server is never paired with an old script.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::routes::Route;

const PAGE: &str = include_str!("../dashboard/index.html");
const SCRIPT: &str = include_str!("../dashboard/dashboard.js");
const STYLE: &str = include_str!("../dashboard/dashboard.css");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    connect-src 'self' ws: wss:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The answer for a dashboard route; `None` for any other route.
pub fn serve(route: &Route) -> Option<Response> {
    let (body, content_type) = match route {
        Route::Dashboard => (PAGE, "text/html; charset=utf-8"),
        Route::DashboardScript => (SCRIPT, "text/javascript; charset=utf-8"),
        Route::DashboardStyle => (STYLE, "text/css; charset=utf-8"),
        _ => return None,
    };
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-cache"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    Some(response)
}
