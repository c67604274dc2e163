//! The API error at the HTTP edge: how an [`AppError`] is answered (status code and
//! `{"error": "<message>"}`), shared by the dispatcher (`http`) and the websockets
//! (`stream`), which both answer application errors.
//!
//! Design decisions:
//! * One mapping from error to status, here and nowhere else; store failures are logged in
//!   full and answered with a generic 500 (the message never leaks internals).
//! * A 401 carries `WWW-Authenticate: Basic`, so clients know to send credentials. The
//!   agent routes answer with their own error type (`agent_api`), whose 401 names the
//!   agent's token scheme instead.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use flotilla_api as api;

use crate::app::AppError;

/// A JSON error answer: `{"error": message}` with `status`.
pub fn error_response(status: StatusCode, message: impl Into<String>) -> Response {
    let mut response = (
        status,
        axum::Json(api::ErrorBody {
            error: message.into(),
        }),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"flotilla\""),
        );
    }
    response
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = match &self {
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::Unauthorized => StatusCode::UNAUTHORIZED,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AppError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Internal(error) => {
                tracing::error!(%error, "request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        error_response(status, self.to_string())
    }
}
