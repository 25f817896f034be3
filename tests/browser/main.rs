//! Drop four in real headless Chromium: two tabs open the game, a click on one drops a disc
//! that appears on the other. First against the demo binary on loopback (no cluster), then
//! through the whole system: a backend created with the `spawner` CLI in the test cluster,
//! reached through the nginx proxy at the URL the CLI prints. Screenshots of both tabs go to
//! `target/artifacts/browser/`.
//!
//! Needs Debian's `chromium`; the cluster test needs `cargo xtask deploy` to have run.

mod cdp;
#[path = "../support/env.rs"]
mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cdp::{Browser, Page};

const WAIT: Duration = Duration::from_secs(60);

fn artifacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("artifacts/browser")
}

fn cell(row: usize, column: usize) -> String {
    format!(".cell[data-row=\"{row}\"][data-col=\"{column}\"]")
}

/// Whether the page shows a disc of `color` at (row, column), in the DOM the player sees.
fn shows(row: usize, column: usize, color: &str) -> String {
    format!("document.querySelector('{}').classList.contains('{color}')", cell(row, column).replace('\'', "\\'"))
}

async fn seated(page: &Page, role: &str) {
    page.wait_until(
        &format!("!!(window.dropFour && dropFour.role === '{role}' && dropFour.state && dropFour.state.players.red && dropFour.state.players.yellow)"),
        WAIT,
        &format!("a page seated as {role} with both players present"),
    )
    .await;
}

/// The scenario both tests run: two tabs at `url` play three moves and see each other's discs.
async fn two_tabs_play(url: &str, label: &str) {
    let browser = Browser::launch().await;
    let red = browser.open(url).await;
    red.wait_until("!!(window.dropFour && dropFour.role === 'red')", WAIT, "the first tab seated as red").await;
    let yellow = browser.open(url).await;
    seated(&yellow, "yellow").await;
    seated(&red, "red").await;

    // Clicking any cell of a column drops the disc to its bottom.
    red.click(&cell(0, 3)).await;
    yellow.wait_until(&shows(5, 3, "red"), WAIT, "red's disc on yellow's board").await;
    yellow.click(&cell(2, 4)).await;
    red.wait_until(&shows(5, 4, "yellow"), WAIT, "yellow's disc on red's board").await;
    red.click(&cell(5, 3)).await;
    yellow.wait_until(&shows(4, 3, "red"), WAIT, "red's second disc stacked on yellow's board").await;
    red.wait_until("dropFour.state.turn === 'yellow'", WAIT, "yellow's turn on red's page").await;
    let status = yellow.eval("document.getElementById('status').textContent").await;
    assert_eq!(status, "Your turn.");

    let dir = artifacts();
    red.screenshot(&dir.join(format!("{label}-red.png"))).await;
    yellow.screenshot(&dir.join(format!("{label}-yellow.png"))).await;
    eprintln!("screenshots: {}", dir.join(format!("{label}-*.png")).display());
}

/// Waits until `url` answers 200. Ready means the pod answers; the Service's forwarding rules
/// (kube-proxy) and cluster DNS can trail it by a moment, during which the proxy answers 502
/// (refused), 504 (its connect timed out) or 404 (the name does not resolve yet).
async fn wait_until_served(url: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap_or_else(|| panic!("not an http URL: {url}"));
    let (authority, path) = rest.split_once('/').unwrap();
    let (host, port) =
        authority.split_once(':').map(|(h, p)| (h, p.parse::<u16>().unwrap())).unwrap_or((authority, 80));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut stream = tokio::net::TcpStream::connect((host, port)).await.unwrap();
        let request = format!("GET /{path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.unwrap();
        let status = String::from_utf8_lossy(&head[9..12]).into_owned();
        if status == "200" {
            return;
        }
        assert!(
            matches!(status.as_str(), "404" | "502" | "504") && std::time::Instant::now() < deadline,
            "{url} answered {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn two_tabs_play_drop_four_on_the_demo_binary() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let _demo = Demo(
        Command::new(env!("CARGO_BIN_EXE_spawner-demo-drop-four"))
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "the demo did not listen within 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Served at a sub-path by a proxy in the cluster; here at the root, same page.
    two_tabs_play(&format!("http://127.0.0.1:{port}/"), "loopback").await;
}

#[tokio::test]
async fn e2e_two_tabs_play_drop_four_through_the_proxy_in_the_cluster() {
    let (namespace, _) = support::TestNamespace::new("browser").await;
    let out = Command::new(env!("CARGO_BIN_EXE_spawner"))
        .args(["--namespace", &namespace.name, "create", "--image", &spawner::names::image("demo-drop-four")])
        .args(["--generate-name", "drop-four-", "--grace-period", "60", "--wait", "--timeout", "3m"])
        .env("KUBECONFIG", support::kubeconfig_path())
        .output()
        .unwrap();
    assert!(out.status.success(), "spawner create failed: {}", String::from_utf8_lossy(&out.stderr));
    let url = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(url.contains(&format!("/p/{}/drop-four-", namespace.name)) && url.contains("?token="), "{url}");
    wait_until_served(&url).await;
    two_tabs_play(&url, "cluster").await;
}

/// The demo's lobby, a web application over spawner-api (deployed by `cargo xtask deploy`, and
/// by `cargo xtask test` on the local cluster, at NodePort 30081): one player starts a New game
/// and enters the room, the other joins with the room code; they play; both leave, and the
/// room's backend is swept after the demo pool's grace period.
#[tokio::test]
async fn e2e_lobby_new_game_then_join_by_code_then_both_leave_and_the_room_is_swept() {
    use kube::ResourceExt;
    use kube::runtime::wait::{await_condition, conditions};
    const LOBBY: &str = "http://127.0.0.1:30081/";
    // The demo pool's gracePeriodSeconds, and time for the sweeper and garbage collection.
    const SWEPT_WITHIN: Duration = Duration::from_secs(60 + 120);

    let browser = Browser::launch().await;
    let red = browser.open(LOBBY).await;
    red.wait_until("!!document.getElementById('new')", WAIT, "the lobby's page").await;
    red.click("#new").await;
    red.wait_until("!!document.getElementById('room-code')", WAIT, "the new room's code").await;
    let code = red.eval("document.getElementById('room-code').textContent").await;
    let code = code.as_str().expect("a room code").to_owned();
    let room = red.eval("document.getElementById('play').href").await.as_str().expect("the room's link").to_owned();
    red.click("#play").await;
    red.wait_until("!!(window.dropFour && dropFour.role === 'red')", WAIT, "the first player seated as red").await;

    let yellow = browser.open(LOBBY).await;
    yellow.wait_until("!!document.getElementById('code')", WAIT, "the lobby's page").await;
    yellow.eval(&format!("document.getElementById('code').value = {code:?}")).await;
    yellow.click("#join").await;
    seated(&yellow, "yellow").await;
    seated(&red, "red").await;
    let joined = yellow.eval("location.href").await;
    assert_eq!(joined.as_str(), Some(room.as_str()), "Join with the code reaches the room New game made");
    red.click(&cell(0, 2)).await;
    yellow.wait_until(&shows(5, 2, "red"), WAIT, "red's disc on yellow's board").await;
    let dir = artifacts();
    red.screenshot(&dir.join("lobby-red.png")).await;
    yellow.screenshot(&dir.join("lobby-yellow.png")).await;

    // /p/<namespace>/<name>/?token=...
    let path: Vec<&str> = room.split("/p/").nth(1).expect("a backend URL").split('/').collect();
    let (namespace, name) = (path[0], path[1]);
    let client = kube::Client::try_from(support::config().await).unwrap();
    let api: kube::Api<spawner::crd::SessionLivedBackend> = kube::Api::namespaced(client, namespace);
    let uid = api.get(name).await.expect("the room's backend").uid().unwrap();
    // Both players leave: the browser and its WebSockets go.
    drop((red, yellow, browser));
    let swept = tokio::time::timeout(SWEPT_WITHIN, await_condition(api, name, conditions::is_deleted(&uid))).await;
    assert!(matches!(swept, Ok(Ok(_))), "the room {namespace}/{name} was not swept within {SWEPT_WITHIN:?}: {swept:?}");
}
