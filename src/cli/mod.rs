//! The `spawner` command-line tool: create, inspect, wait for and delete session-lived backends,
//! and print the URL (with its access token) a browser opens. A thin layer over the Kubernetes
//! API: everything it does, `kubectl` can do too.
//!
//! [`crate::client`] holds the operations, [`output`] the printing; this module parses the
//! command line and runs one command.

pub mod error;
pub mod output;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};
use kube::api::ListParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, ResourceExt};

pub use self::error::Error;
use self::output::{Access, Format};
use crate::client::{BackendRequest, Backends, Naming, names, phase_of};
use crate::crd::{AuthMode, SessionLivedBackend};

#[derive(Parser, Debug)]
#[command(
    name = "spawner",
    version,
    about = "Create and manage Spawner session-lived backends",
    long_about = "Create and manage Spawner session-lived backends: one pod per user, document or room, \
                  reached through the reverse proxy and swept when idle.\n\n\
                  Uses the current kubeconfig context (KUBECONFIG or ~/.kube/config) unless told otherwise."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Namespace to work in [default: the kubeconfig context's namespace, else "default"].
    #[arg(short, long, global = true)]
    pub namespace: Option<String>,
    /// Kubeconfig file [default: $KUBECONFIG, then ~/.kube/config, then in-cluster].
    #[arg(long, global = true, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use [default: the current context].
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Format::Text)]
    pub output: Format,
    /// Log format of diagnostics on stderr (set RUST_LOG=debug for more).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

pub use crate::process::LogFormat;

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a backend running IMAGE. Prints its name, or with --wait its URL (with the access
    /// token) once it is Ready.
    Create(CreateArgs),
    /// Show one backend.
    Get {
        /// Backend name.
        name: String,
    },
    /// List the backends of the namespace.
    #[command(visible_alias = "ls")]
    List {
        /// List the backends of every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// Only backends whose labels match this selector (e.g. `team=a`).
        #[arg(short = 'l', long)]
        selector: Option<String>,
    },
    /// Delete backends (their pod, Service and token Secret go with them).
    #[command(visible_alias = "rm")]
    Delete {
        /// Backend names.
        #[arg(required = true)]
        names: Vec<String>,
        /// Wait until they are gone.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits (e.g. 90s, 5m).
        #[arg(long, default_value = "2m", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Wait until a backend is Ready (prints its URL) or deleted.
    Wait {
        /// Backend name.
        name: String,
        /// What to wait for.
        #[arg(long = "for", value_enum, default_value_t = WaitFor::Ready)]
        for_: WaitFor,
        /// How long to wait (e.g. 90s, 5m).
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Print the URL of a backend, with its access token.
    Url {
        /// Backend name.
        name: String,
    },
    /// Get or create the backend for KEY and print its URL once Ready. The same key always
    /// reaches the same live backend, however many callers race; a Failed one is replaced.
    Connect(ConnectArgs),
    /// Manage the keys web applications call spawner-api with.
    #[command(subcommand)]
    ApiKey(ApiKeyCommand),
    /// Print a shell completion script (e.g. `spawner completions bash > /etc/bash_completion.d/spawner`).
    Completions {
        /// Shell to complete for.
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand, Debug)]
pub enum ApiKeyCommand {
    /// Make a key for the namespace (-n) and print it: it is shown only this once. Grants
    /// spawner-api the namespace.
    Create {
        /// Pool the key may make backends from (repeatable; `*` for any).
        #[arg(long = "pool", value_name = "POOL", required = true)]
        pools: Vec<String>,
        /// Live backends the key may have at once.
        #[arg(long, default_value_t = 10)]
        max_backends: u32,
        /// A label for people (what the key is for).
        #[arg(long, default_value = "")]
        name: String,
    },
    /// List the keys (ids and scopes; the keys themselves are not stored).
    #[command(visible_alias = "ls")]
    List,
    /// Revoke a key by id.
    Revoke {
        /// The key's id (`spawner api-key list`).
        id: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WaitFor {
    Ready,
    Deleted,
}

/// The backend's spec, shared by `create` and `connect`.
#[derive(Args, Debug, Clone)]
pub struct SpecArgs {
    /// Container image of the application.
    #[arg(long, required_unless_present = "pool", conflicts_with = "pool")]
    pub image: Option<String>,
    /// Take a warm pod of this SessionLivedBackendPool instead (its template, port, auth, egress,
    /// Service and grace period apply); with none left, start cold from its template.
    #[arg(
        long,
        value_name = "POOL",
        conflicts_with_all = ["port", "env", "no_auth", "egress", "no_service", "grace_period"]
    )]
    pub pool: Option<String>,
    /// Port the application listens on (it gets it as PORT).
    #[arg(long, default_value_t = crate::crd::DEFAULT_HTTP_PORT)]
    pub port: i32,
    /// Seconds without any connection before the backend is swept.
    #[arg(long, value_name = "SECONDS", default_value_t = crate::crd::DEFAULT_GRACE_PERIOD_SECONDS)]
    pub grace_period: i64,
    /// Seconds the backend may take to become Ready [default: 300, or --max-lifetime when
    /// shorter].
    #[arg(long, value_name = "SECONDS")]
    pub startup_timeout: Option<i64>,
    /// Hard limit on the backend's life in seconds.
    #[arg(long, value_name = "SECONDS")]
    pub max_lifetime: Option<i64>,
    /// Environment variable of the application, KEY=VALUE (repeatable).
    #[arg(short, long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Serve the backend without an access token.
    #[arg(long)]
    pub no_auth: bool,
    /// Where the backend may connect to: DNS and public addresses, nothing, or anywhere.
    #[arg(long, value_enum, default_value_t = crate::crd::Egress::Public)]
    pub egress: crate::crd::Egress,
    /// Make no ClusterIP Service for the backend (spec.service.enabled: false): the reverse
    /// proxy does not need one; only clients inside the cluster that call it by name do.
    #[arg(long)]
    pub no_service: bool,
    /// A setting of this session, KEY=VALUE (repeatable; spec.values): the application reads
    /// them from its sidecar, also from a warm pod of --pool.
    #[arg(long = "value", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub values: Vec<(String, String)>,
}

impl SpecArgs {
    fn request(&self, naming: Naming) -> BackendRequest {
        let mut request = match (&self.pool, &self.image) {
            (Some(pool), _) => BackendRequest::from_pool(naming, pool.clone()),
            (None, image) => BackendRequest::new(naming, image.clone().unwrap_or_default()),
        };
        request.http_port = self.port;
        request.grace_period_seconds = self.grace_period;
        request.startup_timeout_seconds = self.startup_timeout;
        request.max_lifetime_seconds = self.max_lifetime;
        request.env = self.env.clone();
        request.auth = if self.no_auth { AuthMode::None } else { AuthMode::Token };
        request.egress = self.egress;
        request.service = !self.no_service;
        request.values = self.values.iter().cloned().collect();
        request
    }
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Name of the backend.
    #[arg(long, conflicts_with = "generate_name")]
    pub name: Option<String>,
    /// Prefix of a generated name [default: the image's name and a dash; with --pool, the
    /// pool's name and "-session-"].
    #[arg(long, value_name = "PREFIX")]
    pub generate_name: Option<String>,
    /// Wait until the backend is Ready and print its URL.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits (e.g. 90s, 5m).
    #[arg(long, default_value = "5m", value_parser = parse_duration, requires = "wait")]
    pub timeout: Duration,
}

#[derive(Args, Debug)]
pub struct ConnectArgs {
    /// Any string naming the session, user, document or room.
    pub key: String,
    #[command(flatten)]
    pub spec: SpecArgs,
    /// How long to wait for the backend to become Ready.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// `KEY=VALUE`.
fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

/// `90`, `90s`, `5m`, `1h`, `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let invalid = || format!("{s:?} is not a duration (examples: 30s, 5m, 1h30m)");
    if let Ok(seconds) = s.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    let mut total = 0u64;
    let mut number = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => return Err(invalid()),
        };
        let n: u64 = number.parse().map_err(|_| invalid())?;
        total = total.saturating_add(n.saturating_mul(unit));
        number.clear();
    }
    if !number.is_empty() || s.is_empty() {
        return Err(invalid());
    }
    Ok(Duration::from_secs(total))
}

async fn api_key(
    command: ApiKeyCommand,
    scope: &Backends,
    format: Format,
    print: &mut dyn FnMut(String) -> Result<(), Error>,
) -> Result<(), Error> {
    use crate::api::keys::admin;
    match command {
        ApiKeyCommand::Create { pools, max_backends, name } => {
            let new = admin::create(&scope.client, &name, vec![scope.namespace.clone()], pools, max_backends).await?;
            match format {
                Format::Text => {
                    eprintln!("API key {} for namespace {:?} (shown only now):", new.id, scope.namespace);
                    print(format!("{}\n", new.key))
                }
                _ => print(output::structured(
                    format,
                    &serde_json::json!({"id": new.id, "key": new.key, "record": new.record}),
                )?),
            }
        }
        ApiKeyCommand::List => {
            let keys = admin::list(&scope.client).await?;
            match format {
                Format::Text if keys.is_empty() => {
                    eprintln!("No API keys.");
                    Ok(())
                }
                Format::Text => {
                    let mut table = format!(
                        "{:<13} {:<16} {:<20} {:<24} {:>4}  {}\n",
                        "ID", "NAME", "NAMESPACES", "POOLS", "MAX", "CREATED"
                    );
                    for (id, r) in &keys {
                        table += &format!(
                            "{:<13} {:<16} {:<20} {:<24} {:>4}  {}\n",
                            id,
                            r.name,
                            r.namespaces.join(","),
                            r.pools.join(","),
                            r.max_backends,
                            r.created
                        );
                    }
                    print(table)
                }
                _ => print(output::structured(format, &keys)?),
            }
        }
        ApiKeyCommand::Revoke { id } => {
            admin::revoke(&scope.client, &id).await?;
            match format {
                Format::Text => print(format!("revoked {id}\n")),
                _ => print(output::structured(format, &serde_json::json!({"revoked": id}))?),
            }
        }
    }
}

/// Loads the client configuration the way kubectl does.
async fn client_config(global: &Global) -> Result<Config, Error> {
    let options = KubeConfigOptions { context: global.context.clone(), ..Default::default() };
    let config = match &global.kubeconfig {
        Some(path) => {
            let kubeconfig =
                Kubeconfig::read_from(path).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
            Config::from_custom_kubeconfig(kubeconfig, &options).await
        }
        None if global.context.is_some() => Config::from_kubeconfig(&options).await,
        None => return Config::infer().await.map_err(|e| Error::Config(e.to_string())),
    };
    config.map_err(|e| Error::Config(e.to_string()))
}

async fn scope(global: &Global) -> Result<Backends, Error> {
    let config = client_config(global).await?;
    let namespace = global.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).map_err(|e| Error::Config(e.to_string()))?;
    Ok(Backends::new(client, namespace))
}

/// Runs one command, writing its result to `out`.
pub async fn run(cli: Cli, out: &mut dyn Write) -> Result<(), Error> {
    let format = cli.global.output;
    let mut print = |text: String| out.write_all(text.as_bytes()).map_err(|e| Error::Output(e.to_string()));
    let now = jiff::Timestamp::now();
    match cli.command {
        Command::Completions { shell } => {
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "spawner", &mut buf);
            print(String::from_utf8_lossy(&buf).into_owned())
        }
        Command::ApiKey(command) => {
            let scope = scope(&cli.global).await?;
            api_key(command, &scope, format, &mut print).await
        }
        Command::Create(args) => {
            let naming = match (args.name, args.generate_name) {
                (Some(name), _) => Naming::Name(names::check_name(&name, 0)?),
                (None, Some(prefix)) => Naming::GenerateName(names::check_name(&prefix, 5)?),
                (None, None) => Naming::GenerateName(match (&args.spec.pool, &args.spec.image) {
                    (Some(pool), _) => names::generate_name_for_pool(pool),
                    (None, image) => names::generate_name_for_image(image.as_deref().unwrap_or_default()),
                }),
            };
            let scope = scope(&cli.global).await?;
            let created = scope.create(&args.spec.request(naming)).await?;
            if !args.wait {
                return match format {
                    Format::Text => print(format!("{}\n", created.name_any())),
                    _ => print(output::structured(format, &created)?),
                };
            }
            let ready = scope.wait_ready(&created.name_any(), args.timeout).await?;
            print_access(&scope, &ready, format, &mut print).await
        }
        Command::Get { name } => {
            let scope = scope(&cli.global).await?;
            let backend = scope.get(&name).await?;
            match format {
                Format::Text => print(output::describe(&backend, now)),
                _ => print(output::structured(format, &backend)?),
            }
        }
        Command::List { all_namespaces, selector } => {
            let scope = scope(&cli.global).await?;
            let api: Api<SessionLivedBackend> =
                if all_namespaces { Api::all(scope.client.clone()) } else { scope.backends() };
            let mut params = ListParams::default();
            if let Some(selector) = &selector {
                params = params.labels(selector);
            }
            let where_ =
                if all_namespaces { "any namespace".to_owned() } else { format!("namespace {:?}", scope.namespace) };
            let list =
                api.list(&params).await.map_err(|e| Error::api(format!("cannot list backends in {where_}"), e))?;
            let mut items = list.items;
            items.sort_by_key(|b| (b.namespace(), b.name_any()));
            match format {
                Format::Text if items.is_empty() => {
                    // kubectl's habit: the empty result is news for a person, not for a pipe.
                    eprintln!("No backends found in {where_}.");
                    Ok(())
                }
                Format::Text => print(output::table(&items, all_namespaces, now)),
                _ => print(output::structured(
                    format,
                    &serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}),
                )?),
            }
        }
        Command::Delete { names, wait, timeout } => {
            let scope = scope(&cli.global).await?;
            for name in &names {
                let deleted = scope.delete(name).await?;
                if wait {
                    scope.wait_deleted(name, deleted.uid().as_deref(), timeout).await?;
                }
                if format == Format::Text {
                    print(format!("backend {name:?} deleted\n"))?;
                }
            }
            match format {
                Format::Text => Ok(()),
                _ => print(output::structured(format, &serde_json::json!({"deleted": names}))?),
            }
        }
        Command::Wait { name, for_, timeout } => {
            let scope = scope(&cli.global).await?;
            match for_ {
                WaitFor::Ready => {
                    let ready = scope.wait_ready(&name, timeout).await?;
                    print_access(&scope, &ready, format, &mut print).await
                }
                WaitFor::Deleted => {
                    scope.wait_deleted(&name, None, timeout).await?;
                    match format {
                        Format::Text => print(format!("backend {name:?} is gone\n")),
                        _ => print(output::structured(format, &serde_json::json!({"name": name, "deleted": true}))?),
                    }
                }
            }
        }
        Command::Url { name } => {
            let scope = scope(&cli.global).await?;
            let backend = scope.get(&name).await?;
            print_access(&scope, &backend, format, &mut print).await
        }
        Command::Connect(args) => {
            names::check_key(&args.key)?;
            let scope = scope(&cli.global).await?;
            let request = args.spec.request(Naming::Name(String::new()));
            let ready = scope.connect(&args.key, &request, args.timeout).await?;
            print_access(&scope, &ready, format, &mut print).await
        }
    }
}

async fn print_access(
    scope: &Backends,
    backend: &SessionLivedBackend,
    format: Format,
    print: &mut impl FnMut(String) -> Result<(), Error>,
) -> Result<(), Error> {
    let url = scope.access_url(backend).await?;
    match format {
        Format::Text => print(format!("{url}\n")),
        _ => {
            let name = backend.name_any();
            let access =
                Access { name: &name, namespace: &scope.namespace, phase: phase_of(backend).into(), url: &url };
            print(output::structured(format, &access)?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_read_like_kubectl_timeouts() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn env_takes_key_equals_value() {
        assert_eq!(parse_env("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert!(parse_env("=x").is_err());
        assert!(parse_env("novalue").is_err());
    }

    #[test]
    fn create_wants_an_image_and_one_way_of_naming() {
        let parse = |args: &[&str]| Cli::try_parse_from(["spawner"].iter().chain(args));
        assert!(parse(&["create"]).is_err());
        assert!(parse(&["create", "--image", "i", "--name", "a", "--generate-name", "b"]).is_err());
        assert!(parse(&["create", "--image", "i", "--timeout", "1m"]).is_err(), "--timeout needs --wait");
        let cli = parse(&["-n", "team", "create", "--image", "i", "--env", "A=1", "-e", "B=2", "--wait"]).unwrap();
        assert_eq!(cli.global.namespace.as_deref(), Some("team"));
        let Command::Create(create) = cli.command else { panic!() };
        assert_eq!(create.spec.env.len(), 2);
        assert!(create.wait);
    }

    #[test]
    fn a_pool_replaces_the_image_and_the_pod_shaping_flags() {
        let parse = |args: &[&str]| Cli::try_parse_from(["spawner"].iter().chain(args));
        let cli =
            parse(&["create", "--pool", "room", "--wait", "--max-lifetime", "60", "--value", "ROOM=a=b"]).unwrap();
        let Command::Create(create) = cli.command else { panic!() };
        let backend = create.spec.request(Naming::Name("b".into())).to_backend();
        assert_eq!(backend.spec.values.get("ROOM").map(String::as_str), Some("a=b"), "values go with a pool");
        assert_eq!(backend.spec.pool_ref.map(|r| r.name).as_deref(), Some("room"));
        assert!(backend.spec.template.is_none());
        assert_eq!(backend.spec.max_lifetime_seconds, Some(60), "the lifetime stays the backend's");
        for shaping in [
            &["--image", "i"][..],
            &["--port", "1"],
            &["--env", "A=1"],
            &["--no-auth"],
            &["--egress", "None"],
            &["--no-service"],
        ] {
            let args: Vec<&str> = ["create", "--pool", "room"].iter().chain(shaping).copied().collect();
            assert!(parse(&args).is_err(), "{args:?} should be refused");
        }
        assert!(parse(&["connect", "k", "--pool", "room"]).is_ok());
        assert_eq!(names::generate_name_for_pool("room"), "room-session-");
    }
}
