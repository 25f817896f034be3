//! WebSockets and other upgrades through the real sidecar binary: echo, binary frames,
//! ping/pong, close codes, 16 MiB messages, extension passthrough, 1,000 concurrent sockets,
//! disconnects and shutdown.

use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::support::*;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn ws_connect(addr: SocketAddr, path: &str) -> Ws {
    let config = WebSocketConfig::default().max_message_size(None).max_frame_size(None).read_buffer_size(4096);
    let (ws, resp) = tokio_tungstenite::connect_async_with_config(format!("ws://{addr}{path}"), Some(config), false)
        .await
        .expect("websocket handshake through the sidecar");
    assert_eq!(resp.status(), 101);
    ws
}

async fn next_message(ws: &mut Ws) -> Message {
    tokio::time::timeout(SOON, ws.next()).await.expect("a message in time").expect("stream open").expect("valid frame")
}

#[tokio::test]
async fn text_binary_ping_and_close_codes_pass_through() {
    let (_app, sidecar) = app_and_sidecar(&[]).await;
    let mut ws = ws_connect(sidecar.proxy, "/ws").await;
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("hello"));
    let binary: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    ws.send(Message::binary(binary.clone())).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::binary(binary));
    ws.send(Message::Ping(b"are you there".to_vec().into())).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::Pong(b"are you there".to_vec().into()));
    ws.close(Some(CloseFrame { code: CloseCode::Library(4001), reason: "done".into() })).await.unwrap();
    match next_message(&mut ws).await {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Library(4001)),
        other => panic!("expected the app's close reply, got {other:?}"),
    }
}

#[tokio::test]
async fn sixteen_mebibyte_messages_round_trip() {
    let (_app, sidecar) = app_and_sidecar(&[]).await;
    let mut ws = ws_connect(sidecar.proxy, "/ws").await;
    let big: Vec<u8> = (0..16 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    for _ in 0..2 {
        ws.send(Message::binary(big.clone())).await.unwrap();
        match next_message(&mut ws).await {
            Message::Binary(b) => assert!(b[..] == big[..], "payload changed on the way"),
            other => panic!("{other:?}"),
        }
    }
    let text = "é".repeat(8 * 1024 * 1024);
    ws.send(Message::text(text.clone())).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text(text));
}

/// A raw handshake, returning the response head and the stream after it.
async fn raw_handshake(addr: SocketAddr, path: &str, extra: &str) -> (String, TcpStream) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(SOON, tcp.read(&mut byte)).await.expect("response in time").unwrap();
        assert_eq!(n, 1, "closed before the end of the response head: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    (String::from_utf8(head).unwrap().to_ascii_lowercase(), tcp)
}

#[tokio::test]
async fn permessage_deflate_is_negotiated_end_to_end_and_keep_alive_upgrade_counts() {
    let (_app, sidecar) = app_and_sidecar(&[]).await;
    let (head, mut tcp) = raw_handshake(
        sidecar.proxy,
        "/ws-ext",
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
    )
    .await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("sec-websocket-extensions: permessage-deflate\r\n"), "{head}");
    // RFC 6455's sample key.
    assert!(head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=\r\n"), "{head}");
    assert!(head.contains("upgrade: websocket\r\n"), "{head}");
    // A masked close frame (control frames are never compressed); the app answers with its own.
    tcp.write_all(&[0x88, 0x82, 1, 2, 3, 4, 0x03 ^ 1, 0xe8 ^ 2]).await.unwrap();
    let reply = read_bytes_until_close(&mut tcp).await;
    assert_eq!(reply[..4], [0x88, 0x02, 0x03, 0xe8], "the app's close reply, code 1000: {reply:?}");
}

#[tokio::test]
async fn an_upgrade_the_app_refuses_passes_through_unchanged() {
    let (_app, sidecar) = app_and_sidecar(&[]).await;
    let (head, _tcp) = raw_handshake(sidecar.proxy, "/status?code=403", "").await;
    assert!(head.starts_with("http/1.1 403"), "{head}");
    let (head, _tcp) = raw_handshake(sidecar.proxy, "/not-a-websocket-endpoint", "").await;
    assert!(head.starts_with("http/1.1 404"), "{head}");
}

#[tokio::test]
async fn a_thousand_concurrent_websockets_are_counted_and_all_echo() {
    let (_app, sidecar) = app_and_sidecar(&[]).await;
    let mut events = sidecar.events().await;
    const N: usize = 1000;
    let mut sockets = Vec::with_capacity(N);
    // Open in batches of 100 so the listen backlog is never the limit being tested.
    for batch in 0..N / 100 {
        let opened = futures::future::join_all((0..100).map(|_| ws_connect(sidecar.proxy, "/ws"))).await;
        sockets.extend(opened);
        assert_eq!(sockets.len(), (batch + 1) * 100);
    }
    events.until(|e| e.connections == N as u64).await;
    let echoes = futures::future::join_all(sockets.iter_mut().enumerate().map(|(i, ws)| async move {
        ws.send(Message::text(format!("socket {i}"))).await.unwrap();
        assert_eq!(next_message(ws).await, Message::text(format!("socket {i}")));
    }));
    echoes.await;
    // Half close politely, half vanish: both must be uncounted.
    for (i, mut ws) in sockets.into_iter().enumerate() {
        if i % 2 == 0 {
            ws.close(None).await.unwrap();
        }
    }
    events.until(|e| e.connections == 0 && e.idle_ms.is_some()).await;
}

#[tokio::test]
async fn abrupt_disconnects_on_either_side_leave_nothing_counted() {
    let (app, sidecar) = app_and_sidecar(&[]).await;
    let mut events = sidecar.events().await;

    // The client vanishes (TCP close without a WebSocket close).
    let ws = ws_connect(sidecar.proxy, "/ws").await;
    events.until(|e| e.connections == 1).await;
    drop(ws);
    events.until(|e| e.connections == 0).await;

    // The app crashes under open sockets: clients see the stream end.
    let mut a = ws_connect(sidecar.proxy, "/ws").await;
    let mut b = ws_connect(sidecar.proxy, "/ws").await;
    events.until(|e| e.connections == 2).await;
    app.crash();
    for ws in [&mut a, &mut b] {
        let end = tokio::time::timeout(SOON, ws.next()).await.expect("the stream ends");
        assert!(!matches!(end, Some(Ok(Message::Text(_) | Message::Binary(_)))), "{end:?}");
    }
    events.until(|e| e.connections == 0).await;
}

#[tokio::test]
async fn sigterm_closes_websockets_with_going_away() {
    let (_app, mut sidecar) = app_and_sidecar(&["--drain-timeout", "5", "--close-timeout", "2"]).await;
    let mut ws = ws_connect(sidecar.proxy, "/ws").await;
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("before"));
    sidecar.terminate();
    match next_message(&mut ws).await {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected a 1001 close, got {other:?}"),
    }
    // tungstenite answered the close; the sidecar then ends the TCP connection.
    let end = tokio::time::timeout(SOON, ws.next()).await.expect("the stream ends");
    assert!(matches!(end, None | Some(Err(_))), "{end:?}");
    let status = sidecar.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "{status:?}\n{}", sidecar.log());
}
