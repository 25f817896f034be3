//! The API's outside suites against the deployed spawner-api: the TypeScript client's tests
//! (clients/typescript, Node's test runner) and schemathesis (from PyPI) fuzzing every operation
//! of `openapi.json` for a 5xx. A namespace of their own with the demo's pool, API keys made by
//! the `spawner` CLI as a user would, then the namespace and the keys removed.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use xshell::{Shell, cmd};

/// The namespace the suites' backends live in.
const NAMESPACE: &str = "spawner-api-suites";
/// schemathesis, pinned, in a virtualenv of its own under the cache.
const SCHEMATHESIS: &str = "schemathesis==4.32.5";

/// Runs both suites; returns the (passed, failed) counts (schemathesis counts as one test).
pub fn run(kubeconfig: &Path, base_url: &str) -> Result<(u64, u64)> {
    let root = crate::project_root();
    let sh = Shell::new()?;
    sh.change_dir(&root);
    sh.set_var("KUBECONFIG", kubeconfig);
    if cmd!(sh, "npm --version").quiet().ignore_stdout().run().is_err() {
        bail!("npm is missing: the TypeScript client's tests need Node.js 20+ and npm");
    }
    let ns = NAMESPACE;
    let _ = cmd!(sh, "kubectl delete namespace {ns} --ignore-not-found --wait=true").quiet().run();
    cmd!(sh, "kubectl create namespace {ns}").quiet().run()?;
    let result = (|| -> Result<(u64, u64)> {
        cmd!(sh, "kubectl -n {ns} apply -f config/samples/pool.yaml").quiet().run()?;
        let (key, id) = make_key(&sh, 10, "typescript-client")?;
        let typescript = typescript(&sh, &root, base_url, &key);
        revoke(&sh, &id)?;
        let (passed, failed) = typescript?;
        let (key, id) = make_key(&sh, 3, "schemathesis")?;
        let fuzzed = schemathesis(&sh, base_url, &key);
        revoke(&sh, &id)?;
        fuzzed?;
        Ok((passed + 1, failed))
    })();
    let _ = cmd!(sh, "kubectl delete namespace {ns} --ignore-not-found --wait=false").quiet().run();
    result
}

/// `spawner api-key create` for the suites' namespace and the demo's pool: (key, id).
fn make_key(sh: &Shell, max_backends: u32, name: &str) -> Result<(String, String)> {
    let (ns, pool, max) = (NAMESPACE, crate::manifests::DEMO_POOL, max_backends.to_string());
    let made = cmd!(
        sh,
        "cargo run -q --bin spawner -- -n {ns} -o json api-key create --pool {pool} --max-backends {max} --name {name}"
    )
    .read()
    .context("making an API key with `spawner api-key create`")?;
    let made: serde_json::Value = serde_json::from_str(&made).context("the CLI's JSON")?;
    let field = |f: &str| made[f].as_str().map(str::to_owned).context("the CLI's JSON has the key and its id");
    Ok((field("key")?, field("id")?))
}

fn revoke(sh: &Shell, id: &str) -> Result<()> {
    cmd!(sh, "cargo run -q --bin spawner -- api-key revoke {id}").quiet().run().context("revoking a suite's API key")
}

fn typescript(sh: &Shell, root: &Path, base_url: &str, key: &str) -> Result<(u64, u64)> {
    println!("    TypeScript client: npm ci && npm test");
    let _dir = sh.push_dir(root.join("clients/typescript"));
    cmd!(sh, "npm ci --no-audit --no-fund").run().context("npm ci")?;
    let out = cmd!(sh, "npm test")
        .env("SPAWNER_API_URL", base_url)
        .env("SPAWNER_API_KEY", key)
        .env("SPAWNER_API_NAMESPACE", NAMESPACE)
        .env("SPAWNER_API_POOL", crate::manifests::DEMO_POOL)
        .ignore_status()
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    let count = |word: &str| {
        stdout.lines().find_map(|l| l.strip_prefix(&format!("# {word} "))).and_then(|n| n.trim().parse().ok())
    };
    let (passed, failed) = (count("pass").unwrap_or(0), count("fail").unwrap_or(0));
    if !out.status.success() || failed > 0 || passed == 0 {
        bail!("npm test (clients/typescript) failed: {passed} passed, {failed} failed ({})", out.status);
    }
    Ok((passed, failed))
}

/// The virtualenv's `st`, installed on first use.
fn schemathesis_bin(sh: &Shell) -> Result<PathBuf> {
    let venv = crate::cluster::cache_root()?.join("schemathesis-venv");
    let st = venv.join("bin/st");
    let version = cmd!(sh, "{st} --version").quiet().ignore_stderr().read().unwrap_or_default();
    if !version.contains(SCHEMATHESIS.trim_start_matches("schemathesis==")) {
        println!("    installing {SCHEMATHESIS} (PyPI) into {}", venv.display());
        cmd!(sh, "python3 -m venv {venv}").quiet().run().context("python3 -m venv (apt-get install python3-venv)")?;
        let pip = venv.join("bin/pip");
        cmd!(sh, "{pip} install -q {SCHEMATHESIS}").run().context("pip install schemathesis")?;
    }
    Ok(st)
}

/// Every operation of openapi.json, examples, coverage and fuzzing, in the suites' namespace:
/// no answer may be a 5xx.
fn schemathesis(sh: &Shell, base_url: &str, key: &str) -> Result<()> {
    println!("    schemathesis: every operation of openapi.json, no 5xx");
    let st = schemathesis_bin(sh)?;
    let config = crate::project_root().join("target/schemathesis.toml");
    // The namespace path parameter fixed to the one the key serves, so the operations get past
    // the scope check; everything else is generated.
    std::fs::write(&config, format!("[parameters]\nnamespace = \"{NAMESPACE}\"\n"))?;
    let schema = format!("{base_url}/api/v1/openapi.json");
    let auth = format!("Authorization: Bearer {key}");
    cmd!(
        sh,
        "{st} --config-file {config} run {schema} --checks not_a_server_error --header {auth} --max-examples 25 --seed 1 --request-timeout 330 --phases examples,coverage,fuzzing --generation-database none --no-color --output-sanitize true"
    )
    // Not echoed: the command line carries the API key.
    .quiet()
    .run()
    .context("schemathesis found a 5xx (or could not run)")
}
