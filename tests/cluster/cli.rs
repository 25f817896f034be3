//! The `spawner` CLI as a user runs it: the real binary against the test cluster.
//!
//! The tests that wait for Ready need Spawner deployed (`cargo xtask deploy`, which
//! `cargo xtask test` runs first); the others need only the CRD, which they install.

use std::process::{Command, Output};
use std::time::Duration;

use kube::api::{Api, ListParams};
use spawner::crd::SessionLivedBackend;

use crate::support::{self, TestEnv};

fn spawner(env: &TestEnv, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spawner"))
        .args(["--namespace", &env.namespace])
        .args(args)
        .env("KUBECONFIG", support::kubeconfig_path())
        .output()
        .expect("running spawner")
}

/// Runs the CLI, expecting success; returns stdout.
fn ok(env: &TestEnv, args: &[&str]) -> String {
    let out = spawner(env, args);
    assert!(
        out.status.success(),
        "spawner {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs the CLI, expecting failure; returns the one stderr line.
fn fails(env: &TestEnv, args: &[&str]) -> String {
    let out = spawner(env, args);
    assert_eq!(out.status.code(), Some(1), "spawner {} should fail: {out:?}", args.join(" "));
    assert!(out.stdout.is_empty(), "nothing on stdout when failing: {out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "errors are one line: {stderr:?}");
    stderr.trim_end().to_owned()
}

/// Runs the CLI, expecting a usage error (exit code 2); returns the one stderr line.
fn refused(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_spawner")).args(args).output().expect("running spawner");
    assert_eq!(out.status.code(), Some(2), "spawner {} should be refused as a usage error: {out:?}", args.join(" "));
    assert!(out.stdout.is_empty(), "nothing on stdout when refusing: {out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "errors are one line: {stderr:?}");
    stderr.trim_end().to_owned()
}

const IMAGE: &str = "localhost/spawner/demo-drop-four:0.1.0";

#[tokio::test]
async fn create_get_list_and_delete_a_backend() {
    let env = TestEnv::new("cli-crud").await;
    support::install_crd(&env.client).await;

    assert_eq!(
        ok(&env, &["create", "--image", IMAGE, "--name", "web-1", "--env", "MODE=test", "--grace-period", "30"]),
        "web-1\n"
    );
    let generated = ok(&env, &["create", "--image", IMAGE, "--generate-name", "game-"]);
    assert!(generated.starts_with("game-") && generated.len() > "game-\n".len(), "{generated:?}");
    let defaulted = ok(&env, &["create", "--image", IMAGE]);
    assert!(defaulted.starts_with("demo-drop-four-"), "the default name comes from the image: {defaulted:?}");

    let backend: SessionLivedBackend = serde_json::from_str(&ok(&env, &["get", "web-1", "-o", "json"])).unwrap();
    assert_eq!(backend.spec.grace_period_seconds, 30);
    let container = &backend.spec.template.as_ref().unwrap().containers[0];
    assert_eq!(container.image.as_deref(), Some(IMAGE));
    assert_eq!(container.env.as_ref().unwrap()[0].value.as_deref(), Some("test"));
    let described = ok(&env, &["get", "web-1"]);
    assert!(
        described.contains("Name:            web-1") && described.contains(&format!("Image:           {IMAGE}")),
        "{described}"
    );

    let table = ok(&env, &["list"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "PHASE", "READY", "REASON", "URL", "AGE"]);
    let names: Vec<&str> = lines.map(|l| l.split_whitespace().next().unwrap()).collect();
    assert_eq!(names.len(), 3, "{table}");
    assert!(names.contains(&"web-1"), "{table}");
    let listed: serde_yaml::Value = serde_yaml::from_str(&ok(&env, &["list", "-o", "yaml"])).unwrap();
    assert_eq!(listed["items"].as_sequence().unwrap().len(), 3);

    assert_eq!(ok(&env, &["delete", "web-1", "--wait", "--timeout", "60s"]), "backend \"web-1\" deleted\n");
    assert!(env.api::<SessionLivedBackend>().get_opt("web-1").await.unwrap().is_none());
    let error = fails(&env, &["get", "web-1"]);
    assert_eq!(error, format!("error: backend \"web-1\" not found in namespace \"{}\"", env.namespace));
}

#[tokio::test]
async fn errors_are_one_clear_line_with_a_non_zero_exit() {
    let env = TestEnv::new("cli-errors").await;
    support::install_crd(&env.client).await;
    let ns = &env.namespace;

    assert_eq!(fails(&env, &["delete", "ghost"]), format!("error: backend \"ghost\" not found in namespace \"{ns}\""));
    assert_eq!(fails(&env, &["url", "ghost"]), format!("error: backend \"ghost\" not found in namespace \"{ns}\""));
    ok(&env, &["create", "--image", IMAGE, "--name", "taken"]);
    assert_eq!(
        fails(&env, &["create", "--image", IMAGE, "--name", "taken"]),
        format!("error: backend \"taken\" already exists in namespace \"{ns}\"")
    );
    // Admission's own words, naming the field.
    let error = fails(&env, &["create", "--image", IMAGE, "--name", "bad", "--grace-period", "0"]);
    assert!(
        error.starts_with("error: cannot create a backend in namespace") && error.contains("gracePeriodSeconds"),
        "{error}"
    );
    let error = refused(&["--namespace", ns, "create", "--image", IMAGE, "--name", "Not_A_Name"]);
    assert!(error.contains("Not_A_Name"), "{error}");
    // A max lifetime alone is accepted: the startup timeout defaults to at most it.
    ok(&env, &["create", "--image", IMAGE, "--name", "brief", "--max-lifetime", "20"]);
    let brief: SessionLivedBackend = serde_json::from_str(&ok(&env, &["get", "brief", "-o", "json"])).unwrap();
    assert_eq!((brief.spec.max_lifetime_seconds, brief.spec.startup_timeout_seconds), (Some(20), None));
    assert!(ok(&env, &["get", "brief"]).contains("Startup timeout: 20s\n"));
    // One the user set above it is refused, naming both fields.
    let error = fails(&env, &["create", "--image", IMAGE, "--max-lifetime", "20", "--startup-timeout", "60"]);
    assert!(error.contains("spec.startupTimeoutSeconds") && error.contains("spec.maxLifetimeSeconds"), "{error}");

    // No usable kubeconfig.
    let out = Command::new(env!("CARGO_BIN_EXE_spawner"))
        .args(["--kubeconfig", "/nonexistent/kubeconfig", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.starts_with("error: cannot load the Kubernetes client configuration: /nonexistent/kubeconfig"),
        "{stderr}"
    );
}

/// A blank key would still map to a backend, one every such mistake would share: refused as
/// a usage error before any kubeconfig is read or the API server is asked.
#[test]
fn connect_refuses_an_empty_or_blank_key_before_touching_the_api() {
    for key in ["", "   ", "\t"] {
        let error = refused(&["--kubeconfig", "/nonexistent/kubeconfig", "connect", key, "--image", IMAGE]);
        assert!(error.starts_with("error: invalid connect key"), "{error}");
    }
}

/// The kubelet's reason (ErrImagePull, then ImagePullBackOff) reaches everything the CLI says
/// about the backend: its description, its JSON, the list, and the errors of `wait` and of
/// `connect`. Runs its own controller (no Spawner deployment needed, nor any image).
#[tokio::test]
async fn an_unpullable_image_is_named_by_get_list_wait_and_connect() {
    const UNPULLABLE: &str = "nosuch.invalid/nosuch:1";
    let env = TestEnv::new("cli-unpullable").await;
    support::controller::prepare(&env).await;
    let _controller = support::controller::ControllerProcess::start(&env, &[]);
    let pull_failed = |b: Option<&SessionLivedBackend>| {
        b.and_then(|b| b.status.as_ref()?.reason.as_deref())
            .is_some_and(|r| r == "ErrImagePull" || r == "ImagePullBackOff")
    };
    let backends = env.api::<SessionLivedBackend>();

    ok(&env, &["create", "--image", UNPULLABLE, "--name", "unpullable"]);
    support::wait_for(&backends, "unpullable", pull_failed, Duration::from_secs(60)).await;
    let error = fails(&env, &["wait", "unpullable", "--timeout", "1s"]);
    let start =
        format!("error: backend \"unpullable\" in namespace \"{}\" is not Ready after 1s (phase ", env.namespace);
    assert!(error.starts_with(&start), "{error}");
    assert_pull_failure_ends(&error, UNPULLABLE);

    let described = ok(&env, &["get", "unpullable"]);
    assert!(
        described.contains("Reason:          ErrImagePull\n")
            || described.contains("Reason:          ImagePullBackOff\n"),
        "{described}"
    );
    let json: serde_json::Value = serde_json::from_str(&ok(&env, &["get", "unpullable", "-o", "json"])).unwrap();
    assert!(json["status"]["message"].as_str().unwrap().contains(UNPULLABLE), "{json}");
    let table = ok(&env, &["list"]);
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert!(row[3] == "ErrImagePull" || row[3] == "ImagePullBackOff", "{table}");

    // `connect` to a key whose backend is stuck the same way says why when it gives up.
    let name = spawner::client::names::name_for_key("stuck room");
    let connect = ["connect", "stuck room", "--image", UNPULLABLE, "--timeout", "1s"];
    let first = fails(&env, &connect);
    assert!(first.contains("is not Ready after 1s"), "{first}");
    support::wait_for(&backends, &name, pull_failed, Duration::from_secs(60)).await;
    let error = fails(&env, &connect);
    assert!(error.contains(&format!("backend \"{name}\"")) && error.contains("is not Ready after 1s"), "{error}");
    assert_pull_failure_ends(&error, UNPULLABLE);
}

/// The error ends with the Ready condition's reason and message, which names the image.
fn assert_pull_failure_ends(error: &str, image: &str) {
    let why = ["ErrImagePull", "ImagePullBackOff"]
        .iter()
        .find_map(|reason| error.split_once(&format!("): {reason}: container application: ")).map(|(_, m)| m));
    assert!(why.is_some_and(|message| message.contains(image)), "{error}");
}

#[test]
fn every_command_has_help_and_completions_are_generated() {
    let run = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_spawner")).args(args).output().unwrap();
    for command in ["create", "get", "list", "delete", "wait", "url", "connect", "completions"] {
        let out = run(&[command, "--help"]);
        assert!(out.status.success(), "{command} --help: {out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage: spawner"), "{command}");
    }
    for shell in ["bash", "zsh", "fish"] {
        let out = run(&["completions", shell]);
        assert!(out.status.success() && out.stdout.len() > 1000, "completions {shell}: {out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("connect"), "{shell} completes subcommands");
    }
    // Usage errors come from clap, with exit code 2.
    assert_eq!(run(&["create"]).status.code(), Some(2));
}

/// Needs Spawner deployed: the backend must become Ready.
#[tokio::test]
async fn e2e_create_wait_url_and_delete_a_running_backend() {
    let env = TestEnv::new("cli-ready").await;
    let url = ok(&env, &["create", "--image", IMAGE, "--name", "game", "--wait", "--timeout", "3m"]);
    let url = url.trim();
    assert!(url.starts_with("http") && url.contains(&format!("/p/{}/game/?token=", env.namespace)), "{url}");
    assert_eq!(ok(&env, &["url", "game"]).trim(), url);
    assert_eq!(ok(&env, &["wait", "game", "--timeout", "30s"]).trim(), url);
    let access: serde_json::Value = serde_json::from_str(&ok(&env, &["url", "game", "-o", "json"])).unwrap();
    assert_eq!(access["url"], url);
    assert_eq!(access["phase"], "Ready");
    let table = ok(&env, &["list"]);
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[..3], ["game", "Ready", "True"], "{table}");

    ok(&env, &["delete", "game", "--wait"]);
    // Garbage collection removes what the controller made for it.
    support::wait_for_children_gone(&env, "game", Duration::from_secs(60)).await;
    ok(&env, &["wait", "game", "--for", "deleted", "--timeout", "10s"]);
}

/// Needs Spawner deployed. Four callers race to connect with one key: one backend, one URL.
#[tokio::test]
async fn e2e_racing_connects_with_one_key_reach_one_backend() {
    let env = TestEnv::new("cli-connect").await;
    let callers: Vec<_> = (0..4)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_spawner"))
                .args(["--namespace", &env.namespace, "connect", "room 42", "--image", IMAGE, "--timeout", "3m"])
                .env("KUBECONFIG", support::kubeconfig_path())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let urls: Vec<String> = callers
        .into_iter()
        .map(|caller| {
            let out = caller.wait_with_output().unwrap();
            assert!(out.status.success(), "connect failed: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        })
        .collect();
    assert!(urls.iter().all(|u| u == &urls[0]), "{urls:#?}");
    let name = spawner::client::names::name_for_key("room 42");
    assert!(urls[0].contains(&format!("/p/{}/{name}/?token=", env.namespace)), "{}", urls[0]);
    let backends = Api::<SessionLivedBackend>::namespaced(env.client.clone(), &env.namespace)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(backends.items.len(), 1);
    assert_eq!(backends.items[0].metadata.annotations.as_ref().unwrap()["spawner.dev/connect-key"], "room 42");

    // Later callers get the same backend; another key gets another.
    assert_eq!(ok(&env, &["connect", "room 42", "--image", IMAGE]).trim(), urls[0]);
    // A deleted backend is made again under the same name on the next connect.
    ok(&env, &["delete", &name, "--wait"]);
    let again = ok(&env, &["connect", "room 42", "--image", IMAGE, "--timeout", "3m"]);
    assert!(again.contains(&format!("/p/{}/{name}/?token=", env.namespace)), "{again}");
}

/// Needs Spawner deployed. A backend that `connect` made and that failed is reported; the next
/// `connect` with the key replaces it.
#[tokio::test]
async fn e2e_connect_reports_its_failed_backend_and_the_next_connect_replaces_it() {
    let env = TestEnv::new("cli-connect-failed").await;
    let broken = ["connect", "doomed", "--image", "localhost/spawner/does-not-exist:0", "--startup-timeout", "5"];
    let error = fails(&env, &[&broken[..], &["--timeout", "2m"]].concat());
    let name = spawner::client::names::name_for_key("doomed");
    assert!(
        error.starts_with(&format!("error: backend \"{name}\" in namespace \"{}\" failed: ", env.namespace)),
        "{error}"
    );
    let backends = env.api::<SessionLivedBackend>();
    // The controller may already have cleaned it up; if not, its uid must change.
    let failed_uid = backends.get_opt(&name).await.unwrap().and_then(|b| b.metadata.uid);

    let url = ok(&env, &["connect", "doomed", "--image", IMAGE, "--timeout", "3m"]);
    assert!(url.contains(&format!("/p/{}/{name}/?token=", env.namespace)), "{url}");
    let replacement = backends.get(&name).await.unwrap();
    assert_ne!(replacement.metadata.uid, failed_uid);
    assert_eq!(replacement.spec.template.as_ref().unwrap().containers[0].image.as_deref(), Some(IMAGE));
}
