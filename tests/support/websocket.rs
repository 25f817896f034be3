//! The JSON messages of a WebSocket (the drop-four demo's).

use std::time::Duration;

/// The next JSON message of type `kind` on a WebSocket (others are skipped); fails the test after
/// 30 s without one.
pub async fn next_of_type<S>(socket: &mut S, kind: &str) -> serde_json::Value
where
    S: futures::StreamExt<
            Item = Result<tokio_tungstenite::tungstenite::Message, tokio_tungstenite::tungstenite::Error>,
        > + Unpin,
{
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(30), socket.next())
            .await
            .unwrap_or_else(|_| panic!("no {kind} message within 30 s"))
            .expect("socket open")
            .expect("socket healthy");
        if let Message::Text(text) = frame {
            let value: serde_json::Value = serde_json::from_str(&text).unwrap();
            if value["type"] == kind {
                return value;
            }
        }
    }
}
