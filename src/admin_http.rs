//! Kept on bare hyper: only the accept loop is hand-written; axum::serve would bring in axum for it.
//!
//! The small plain-HTTP server the controller, the sweeper and the router run for the kubelet's
//! probes, Prometheus, (the router) nginx's route lookups and (spawner-api) the API: one accept loop with graceful
//! shutdown, and the few response shapes they need. (The sidecar's admin port streams events and
//! has its own server.)

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A whole response in memory: these endpoints answer small, at once.
pub type Reply = Response<Full<Bytes>>;

/// Serves `respond` on `listener` until `stop` is cancelled, then lets open connections finish.
/// A failed accept (out of file descriptors and the like) is logged and the loop goes on.
pub async fn serve<F>(listener: TcpListener, stop: CancellationToken, respond: F)
where
    F: Fn(&Request<Incoming>) -> Reply + Clone + Send + Sync + 'static,
{
    serve_async(listener, stop, move |req| std::future::ready(respond(&req))).await;
}

/// [`serve`] for answers that wait (the router holds a lookup until its backend is Ready) or
/// stream (the API's status events).
pub async fn serve_async<F, Fut, B>(listener: TcpListener, stop: CancellationToken, respond: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting an admin HTTP connection failed");
                    continue;
                }
            },
        };
        let respond = respond.clone();
        let service = service_fn(move |req| {
            let response = respond(req);
            async move { Ok::<_, Infallible>(response.await) }
        });
        let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "admin HTTP connection ended with an error");
            }
        });
    }
    graceful.shutdown().await;
}

/// A JSON answer.
pub fn json(status: StatusCode, body: &serde_json::Value) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    response
}

/// A plain-text answer.
pub fn text(status: StatusCode, body: &'static str) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// Metrics in the OpenMetrics text format, as `prometheus_client` encodes them.
pub fn openmetrics(registry: &prometheus_client::registry::Registry) -> Reply {
    let mut body = String::new();
    if prometheus_client::encoding::text::encode(&mut body, registry).is_err() {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "failed to encode metrics\n");
    }
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_until_stopped_then_lets_go_of_the_port() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(listener, stop.clone(), |req: &Request<Incoming>| match req.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }));
        let get = |path: &'static str| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut out = String::new();
            stream.read_to_string(&mut out).await.unwrap();
            out
        };
        let ok = get("/healthz").await;
        assert!(ok.starts_with("HTTP/1.1 200") && ok.ends_with("ok\n"), "{ok}");
        assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
        stop.cancel();
        server.await.unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "the listener is closed after stop");
    }
}
