//! The HTTP client side of a sidecar's event stream: one GET on a connection of its own, the
//! response checked to be `text/event-stream`, the connection's task tied to the body.

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::Error;
use crate::sidecar::event::EVENTS_PATH;
use crate::sweeper::guards::AbortOnDrop;

/// A connected event stream; the HTTP connection's task ends with it.
pub(super) struct EventStream {
    pub(super) body: Incoming,
    _connection: AbortOnDrop,
}

pub(super) async fn open(url: &Uri) -> Result<EventStream, Error> {
    let url_string = || url.to_string();
    let authority = url.authority().ok_or_else(|| Error::Url { url: url_string(), reason: "no host:port" })?;
    let port = authority.port_u16().unwrap_or(80);
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    let tcp = TcpStream::connect((host, port)).await.map_err(|source| Error::Connect { url: url_string(), source })?;
    // Events are tiny and latency matters more than packet count.
    let _ = tcp.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|source| Error::Http { url: url_string(), source })?;
    let connection = AbortOnDrop(tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(error = %err, "event stream connection closed with an error");
        }
    }));
    let path = url.path_and_query().map_or(EVENTS_PATH, |p| p.as_str());
    let request = Request::get(path)
        .header(header::HOST, authority.as_str())
        .header(header::ACCEPT, "text/event-stream")
        .body(Empty::<Bytes>::new())
        .map_err(|_| Error::Url { url: url_string(), reason: "cannot build a request for it" })?;
    let response = sender.send_request(request).await.map_err(|source| Error::Http { url: url_string(), source })?;
    let content_type = response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let is_event_stream = content_type.as_deref().is_some_and(|ct| ct.starts_with("text/event-stream"));
    if response.status() != StatusCode::OK || !is_event_stream {
        return Err(Error::Status { url: url_string(), status: response.status(), content_type });
    }
    Ok(EventStream { body: response.into_body(), _connection: connection })
}
