//! A listener on the events websocket (`/api/audit/v1/events/`), delivering each JSON frame
//! with the time it arrived.

use std::time::Instant;

use anyhow::Context as _;
use base64::Engine as _;
use futures::StreamExt as _;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use crate::server::ServerProcess;

/// Connects (the handshake is answered before this returns, so nothing published afterwards
/// is missed) and forwards every frame but the first (`auth`) to `sink` with its arrival
/// time, tagged with `listener`.
pub async fn listen(
    server: &ServerProcess,
    listener: usize,
    sink: mpsc::UnboundedSender<(usize, Instant, Value)>,
) -> anyhow::Result<JoinHandle<()>> {
    let url = server.api().events_url();
    let mut request = url.into_client_request()?;
    let auth =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", server.user, server.key));
    request.headers_mut().insert(
        "Authorization",
        format!("Basic {auth}").parse().context("header")?,
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await?;
    Ok(tokio::spawn(async move {
        while let Some(Ok(message)) = socket.next().await {
            let at = Instant::now();
            if let Message::Text(text) = message
                && let Ok(value) = serde_json::from_str::<Value>(&text)
                && value["type"] != "auth"
                && sink.send((listener, at, value)).is_err()
            {
                return;
            }
        }
    }))
}

/// The uuid at the end of a resource URI (`/api/infra/v1/node/<uuid>/`).
pub fn uri_uuid(uri: &str) -> &str {
    uri.trim_end_matches('/').rsplit('/').next().unwrap_or("")
}
