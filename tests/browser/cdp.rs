//! Kept over chromiumoxide (111k lines of generated CDP, reqwest, a 2nd WebSocket stack) and fantoccini (chromedriver).
//!
//! A small Chrome DevTools Protocol client: starts headless Chromium, opens pages, evaluates
//! JavaScript, clicks with real mouse events and takes screenshots. Just what the browser tests
//! need, over the WebSocket the browser itself serves.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::prelude::{BASE64_STANDARD, Engine as _};
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const CHROMIUM: &str = "/usr/bin/chromium";
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, String>>>>>;
type Sink = SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, Message>;

/// A headless Chromium with a fresh profile, killed (with its profile) on drop.
pub struct Browser {
    child: Child,
    profile: PathBuf,
    sink: tokio::sync::Mutex<Sink>,
    pending: Pending,
    next_id: std::sync::atomic::AtomicU64,
}

impl Browser {
    pub async fn launch() -> Arc<Browser> {
        assert!(Path::new(CHROMIUM).exists(), "{CHROMIUM} not found: install it (apt-get install -y chromium)");
        let profile =
            std::env::temp_dir().join(format!("spawner-chromium-{}-{}", std::process::id(), rand::random::<u32>()));
        std::fs::create_dir_all(&profile).unwrap();
        let child = Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--remote-debugging-port=0",
                "--window-size=760,820",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromium");
        // Chromium writes its DevTools port and path here once it listens.
        let port_file = profile.join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(60);
        let endpoint = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file)
                && let [port, path, ..] = text.lines().collect::<Vec<_>>()[..]
            {
                break format!("ws://127.0.0.1:{port}{path}");
            }
            assert!(Instant::now() < deadline, "chromium did not open its DevTools port within 60 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let (socket, _) = tokio_tungstenite::connect_async(&endpoint).await.expect("connecting to chromium's DevTools");
        let (sink, mut stream) = socket.split();
        let pending: Pending = Arc::default();
        let reader_pending = pending.clone();
        tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                let Message::Text(text) = message else { continue };
                let Ok(value) = serde_json::from_str::<Value>(&text) else { continue };
                // Events (no id) are not needed: the tests poll page state instead.
                let Some(id) = value["id"].as_u64() else { continue };
                if let Some(reply) = reader_pending.lock().unwrap().remove(&id) {
                    let result = match value.get("error") {
                        Some(error) => Err(error.to_string()),
                        None => Ok(value["result"].clone()),
                    };
                    let _ = reply.send(result);
                }
            }
        });
        Arc::new(Browser { child, profile, sink: tokio::sync::Mutex::new(sink), pending, next_id: 1.into() })
    }

    async fn call(&self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        let mut command = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            command["sessionId"] = session.into();
        }
        self.sink.lock().await.send(Message::text(command.to_string())).await.expect("sending a DevTools command");
        match tokio::time::timeout(COMMAND_TIMEOUT, rx).await {
            Ok(Ok(Ok(result))) => result,
            Ok(Ok(Err(error))) => panic!("DevTools {method} failed: {error}"),
            Ok(Err(_)) => panic!("chromium closed the DevTools connection during {method}"),
            Err(_) => panic!("DevTools {method} got no answer within {COMMAND_TIMEOUT:?}"),
        }
    }

    /// Opens a new tab (its own page, same profile) at `url`.
    pub async fn open(self: &Arc<Self>, url: &str) -> Page {
        let target = self.call(None, "Target.createTarget", json!({"url": "about:blank"})).await;
        let target_id = target["targetId"].as_str().unwrap().to_owned();
        let attached = self.call(None, "Target.attachToTarget", json!({"targetId": target_id, "flatten": true})).await;
        let page = Page { browser: self.clone(), session: attached["sessionId"].as_str().unwrap().to_owned() };
        page.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 760, "height": 820, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;
        page.call("Page.navigate", json!({"url": url})).await;
        page
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// One tab.
pub struct Page {
    browser: Arc<Browser>,
    session: String,
}

impl Page {
    async fn call(&self, method: &str, params: Value) -> Value {
        self.browser.call(Some(&self.session), method, params).await
    }

    /// Evaluates a JavaScript expression and returns its value (JSON).
    pub async fn eval(&self, expression: &str) -> Value {
        let reply = self
            .call("Runtime.evaluate", json!({"expression": expression, "returnByValue": true, "awaitPromise": true}))
            .await;
        if let Some(exception) = reply.get("exceptionDetails") {
            panic!("{expression} threw: {exception}");
        }
        reply["result"]["value"].clone()
    }

    /// Polls `expression` until it is `true`, failing after `timeout` with `what`.
    pub async fn wait_until(&self, expression: &str, timeout: Duration, what: &str) {
        let deadline = Instant::now() + timeout;
        loop {
            // Errors while the page is still loading count as "not yet".
            let reply = self.call("Runtime.evaluate", json!({"expression": expression, "returnByValue": true})).await;
            if reply["result"]["value"] == Value::Bool(true) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: not seen within {timeout:?} (last: {reply})");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks the centre of the first element matching `selector` with real mouse events.
    pub async fn click(&self, selector: &str) {
        let rect = self
            .eval(&format!(
                "(() => {{ const r = document.querySelector({selector:?}).getBoundingClientRect(); \
                 return {{x: r.x + r.width / 2, y: r.y + r.height / 2}}; }})()"
            ))
            .await;
        for kind in ["mouseMoved", "mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": rect["x"], "y": rect["y"], "button": "left", "clickCount": 1}),
            )
            .await;
        }
    }

    /// Saves a PNG screenshot.
    pub async fn screenshot(&self, path: &Path) {
        // A background tab produces no frames to capture: bring this one to the front first.
        self.call("Page.bringToFront", json!({})).await;
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"})).await;
        let png = BASE64_STANDARD.decode(shot["data"].as_str().unwrap()).expect("DevTools sends standard base64");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}
