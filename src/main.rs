//! The `berth` command: a thin shell over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use berth::admin;
use berth::config::Config;
use berth::server::Server;

/// berth: a pull-through caching mirror for container registries.
///
/// List berth in Docker's "registry-mirrors", containerd's hosts.toml or podman's
/// registries.conf. It fetches what it lacks once from the configured upstream, verifies it
/// against its sha256 digest, and serves every later pull from disk.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the mirror. Without --config: listen on 127.0.0.1:5000, cache in ./berth-data,
    /// mirror Docker Hub, metrics on 127.0.0.1:9090.
    Serve {
        /// TOML configuration file (see config.example.toml).
        #[arg(long, short, env = "BERTH_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Re-hash every cached blob: move files whose sha256 does not match their name into
    /// <storage>/quarantine/, remove temp files left by a crash, print a report. Safe while berth
    /// serves the same storage. With --bucket, the [storage.s3] bucket's blobs and manifests
    /// too (bad ones are deleted). Exit 0: all fine; 1: something was quarantined or deleted; 2:
    /// config, I/O or bucket error.
    Verify {
        /// TOML configuration file; its [storage] path is verified (default: ./berth-data).
        #[arg(long, short, env = "BERTH_CONFIG")]
        config: Option<PathBuf>,
        /// Also re-hash every blob and manifest in the [storage.s3] bucket, and delete (and
        /// report) those that do not hash to their names. Reads the whole bucket.
        #[arg(long)]
        bucket: bool,
    },
    /// Probe a running berth's health endpoint: exit 0 when it answers 2xx, 1 otherwise
    /// (another status, refused, timed out). For container HEALTHCHECKs, where no curl exists.
    Health {
        /// The URL to GET (the metrics listener; https:// when it has [metrics] tls_cert). The
        /// environment variable lets a container whose metrics listener moved keep the image's
        /// HEALTHCHECK.
        #[arg(
            long,
            env = "BERTH_HEALTH_URL",
            default_value = "http://127.0.0.1:9090/healthz"
        )]
        url: String,
        /// Give up after this long.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        /// PEM certificates to trust for an https URL, besides the public roots (e.g. the
        /// metrics listener's own self-signed certificate).
        #[arg(long, env = "BERTH_HEALTH_CA_FILE", value_name = "FILE")]
        ca_file: Option<PathBuf>,
    },
    /// Validate a configuration file and print the effective configuration (secrets redacted).
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Pre-fetch images through a running berth, so they are cached before a rollout: every
    /// platform of a multi-platform image, its config and every layer (with --referrers, its
    /// signatures and SBOMs too). Exit 0: all warmed; 1: some failed (each is named); 2: a bad
    /// reference, option or config.
    #[command(after_help = WARM_HELP)]
    Warm(WarmArgs),
    /// What is cached, removing it, totals. Goes through the running berth's admin API when the
    /// config enables it ([admin]), else works on the storage directory (stop berth first, or
    /// it keeps answering removed manifests from memory). Exit 0: done; 1: nothing matched;
    /// 2: config, I/O or API error.
    Cache {
        #[command(subcommand)]
        op: CacheOp,
        /// TOML configuration file (default: the embedded default, ./berth-data).
        #[arg(long, short, env = "BERTH_CONFIG", global = true)]
        config: Option<PathBuf>,
        /// Work on the storage directory even when the config enables the admin API.
        #[arg(long, global = true, conflicts_with = "url")]
        direct: bool,
        /// Call the admin API at this URL (http://host:port or https://host:port) with the
        /// config's admin token.
        #[arg(long, global = true)]
        url: Option<String>,
        /// PEM certificates to trust for an https admin API, besides the public roots (default
        /// without --url: the config's [metrics] tls_cert).
        #[arg(long, global = true, value_name = "FILE", alias = "cacert")]
        ca_file: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long, global = true)]
        json: bool,
    },
}

const WARM_HELP: &str = "\
References go to berth as a pull would send them: no registry (or docker.io) means berth's default
upstream; another registry is asked for with containerd's ?ns=<registry>, which berth answers only
for hosts configured as an [[upstream]] name or alias.

Examples:
  berth warm nginx:1.25 quay.io/coreos/flannel:v0.11.0
  berth warm --config /etc/berth/config.toml --file rollout.txt --platform linux/amd64
  berth warm --referrers ghcr.io/team/app:v3     # with its signatures, SBOMs and theirs
  berth warm --server https://mirror.internal:5000 --ca-file ca.pem registry.local:5000/team/app:v3
  echo \"$PASSWORD\" | berth warm --user ci --password-stdin --server http://berth:5000 nginx:1.25
  berth warm --config /etc/berth/config.toml --url http://127.0.0.1:9090 nginx:1.25  # admin API";

#[derive(clap::Args)]
struct WarmArgs {
    /// Image references as for `docker pull`: nginx, nginx:1.25, library/nginx@sha256:<hex>,
    /// quay.io/coreos/flannel:v0.11.0, registry.local:5000/team/app:tag.
    #[arg(value_name = "IMAGE")]
    images: Vec<String>,
    /// Also read references from FILE (repeatable; - reads stdin): one per line, # starts a
    /// comment, blank lines are skipped.
    #[arg(long, short, value_name = "FILE")]
    file: Vec<PathBuf>,
    /// berth's address, e.g. http://mirror.internal:5000 (default: the [server] listen address
    /// of --config on this host, https when it has TLS; 127.0.0.1:5000 without a config).
    #[arg(long, short, value_name = "URL")]
    server: Option<String>,
    /// TOML configuration file of the berth to warm; only its [server] section is read, and only
    /// when --server is not given.
    #[arg(long, short, env = "BERTH_CONFIG")]
    config: Option<PathBuf>,
    /// PEM certificates to trust for an https server, besides the public roots.
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// Only this platform of a multi-platform image (repeatable; default: every platform).
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    platform: Vec<berth::warm::Platform>,
    /// Transfers at once.
    #[arg(long, short, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    jobs: u16,
    /// Log in to a berth with [auth] as USER; the password comes from --password-stdin or the
    /// environment variable BERTH_PASSWORD (never from the command line).
    #[arg(long, short, value_name = "USER", env = "BERTH_USER")]
    user: Option<String>,
    /// Read the password for --user from the first line of stdin.
    #[arg(long, requires = "user")]
    password_stdin: bool,
    /// Also warm each image's referrers (OCI 1.1: the signatures, SBOMs and attestations naming
    /// its manifest, or a platform's, as their subject) and the referrers of those, one level:
    /// the lists, manifests and blobs, so `cosign verify` or `oras discover` find them offline.
    /// Needs a berth with the referrers API; a referrer that fails fails its image.
    #[arg(long)]
    referrers: bool,
    /// Ask the admin API at this URL (http://host:port or https://host:port, the metrics
    /// listener) to warm, with the admin token of --config: berth warms through itself, so no
    /// --user is needed, whatever its [auth]. Prints the same lines and summary.
    #[arg(long, value_name = "URL", conflicts_with_all = ["server", "user", "password_stdin"])]
    url: Option<String>,
}

#[derive(Subcommand)]
enum CacheOp {
    /// Per upstream/repository/tag: digest, size of the cached image, files, last pulled (and an
    /// artifact's type and subject); then untagged artifacts (signatures, SBOMs) with their type
    /// and subject, untagged manifests and orphan blobs.
    Ls {
        /// Only this repository (or repo:tag), optionally upstream-qualified: docker.io/library/nginx.
        #[arg(long)]
        repo: Option<String>,
        /// Only this upstream (its configured name).
        #[arg(long)]
        upstream: Option<String>,
    },
    /// Remove [upstream/]repo:tag (the tag, its manifests, and blobs no other cached image uses),
    /// [upstream/]repo (all its tags), or sha256:<hex> (that one blob or manifest).
    Rm {
        reference: String,
        /// The upstream (configured name) the reference is in; default: every upstream.
        #[arg(long)]
        upstream: Option<String>,
    },
    /// Files, bytes, manifests, tags, temp files, quarantined files, oldest and newest access.
    Stats,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => {
            // The htpasswd file is read by the server when it starts; check it here too, so a
            // file with a non-bcrypt line fails the check, not the next restart.
            let checked =
                Config::load(&config)
                    .map_err(|e| e.to_string())
                    .and_then(|cfg| match &cfg.auth {
                        Some(a) => std::fs::read_to_string(&a.htpasswd)
                            .map_err(|e| e.to_string())
                            .and_then(|t| {
                                berth::access::htpasswd::parse(&t).map_err(|e| e.to_string())
                            })
                            .map_err(|e| {
                                format!(
                                    "{}: auth.htpasswd: {}: {e}",
                                    config.display(),
                                    a.htpasswd.display()
                                )
                            })
                            .map(|_| cfg),
                        None => Ok(cfg),
                    });
            match checked {
                Ok(cfg) => {
                    for w in cfg.warnings() {
                        eprintln!("berth: warning: {w}");
                    }
                    println!("# {}: valid\n{}", config.display(), cfg.to_toml());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("berth: invalid config: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Verify { config, bucket } => {
            let cfg = match load(config.as_deref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let s3 = match (bucket, &cfg.storage.s3) {
                (false, _) => None,
                (true, Some(s3)) => Some(s3.clone()),
                (true, None) => {
                    eprintln!("berth: --bucket needs [storage.s3] in the config");
                    return ExitCode::from(2);
                }
            };
            let local = match berth::verify::run(&cfg.storage.path) {
                Ok(report) => {
                    print!("{report}");
                    report.exit_code()
                }
                Err(e) => {
                    eprintln!("berth: cannot verify: {e}");
                    return ExitCode::from(2);
                }
            };
            match s3 {
                None => ExitCode::from(local),
                Some(s3) => block_on(false, async move {
                    let metrics = berth::store::s3::BucketMetrics::new();
                    let checked = match berth::store::s3::Bucket::connect(&s3, metrics) {
                        Ok(b) => berth::verify::bucket::run(&b).await,
                        Err(e) => Err(e),
                    };
                    match checked {
                        Ok(report) => {
                            print!("{report}");
                            ExitCode::from(local.max(report.exit_code()))
                        }
                        Err(e) => {
                            eprintln!("berth: cannot verify the bucket {}: {e}", s3.bucket);
                            ExitCode::from(2)
                        }
                    }
                }),
            }
        }
        Command::Warm(args) => warm(args),
        Command::Health {
            url,
            timeout,
            ca_file,
        } => block_on(false, health(&url, timeout, ca_file.as_deref())),
        Command::Cache {
            op,
            config,
            direct,
            url,
            ca_file,
            json,
        } => {
            let cfg = match load(config.as_deref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let op = match op {
                CacheOp::Ls { repo, upstream } => admin::Op::List { repo, upstream },
                CacheOp::Rm {
                    reference,
                    upstream,
                } => admin::Op::Remove {
                    reference,
                    upstream,
                },
                CacheOp::Stats => admin::Op::Stats,
            };
            block_on(
                false,
                admin::cli::main(&cfg, direct, url.as_deref(), ca_file.as_deref(), &op, json),
            )
        }
        Command::Serve { config } => {
            let cfg = match load(config.as_deref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            // Flushes buffered log lines when serve returns.
            let (_log_guard, logging) = init_logging(&cfg.log);
            block_on(true, serve(cfg, config, logging))
        }
    }
}

/// A tokio runtime: all cores for `serve`, one thread for the client commands. On failure, tells
/// the operator and returns exit code 2.
fn runtime(multi_thread: bool) -> Result<tokio::runtime::Runtime, ExitCode> {
    let mut b = match multi_thread {
        true => tokio::runtime::Builder::new_multi_thread(),
        false => tokio::runtime::Builder::new_current_thread(),
    };
    b.enable_all().build().map_err(|e| {
        eprintln!("berth: cannot start the runtime: {e}");
        ExitCode::from(2)
    })
}

/// Runs `f` to completion on a fresh [`runtime`].
fn block_on(multi_thread: bool, f: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match runtime(multi_thread) {
        Ok(rt) => rt.block_on(f),
        Err(code) => code,
    }
}

/// The config at `path`, or the embedded default; on error, tells the operator and returns exit code
/// 2.
fn load(path: Option<&std::path::Path>) -> Result<Config, ExitCode> {
    match path {
        Some(path) => Config::load(path).map_err(|e| {
            eprintln!("berth: invalid config: {e}");
            ExitCode::from(2)
        }),
        None => Ok(Config::embedded_default()),
    }
}

/// `--user` with its password from stdin or `BERTH_PASSWORD`; `None` without `--user`.
fn warm_credentials(args: &WarmArgs) -> Result<Option<(String, berth::config::Secret)>, String> {
    let Some(user) = &args.user else {
        return Ok(None);
    };
    if user.is_empty() || user.contains(':') {
        return Err("--user: a user name is not empty and holds no ':'".into());
    }
    let password = if args.password_stdin {
        if args.file.iter().any(|f| f.as_os_str() == "-") {
            return Err("--password-stdin and --file - both read stdin: use one".into());
        }
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| format!("--password-stdin: cannot read stdin: {e}"))?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    } else {
        std::env::var("BERTH_PASSWORD").map_err(|_| {
            "--user needs a password: pipe it to --password-stdin or set BERTH_PASSWORD".to_owned()
        })?
    };
    if password.is_empty() {
        return Err("the password for --user is empty".into());
    }
    Ok(Some((user.clone(), berth::config::Secret::new(password))))
}

/// `berth warm`: references from the arguments and files, checked before anything is fetched.
fn warm(args: WarmArgs) -> ExitCode {
    use berth::warm::{ImageRef, Options, Warmer};
    let mut texts: Vec<(String, String)> = args
        .images
        .iter()
        .map(|s| ("argument".into(), s.clone()))
        .collect();
    for path in &args.file {
        let text = if path.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin())
        } else {
            std::fs::read_to_string(path)
        };
        let text = match text {
            Ok(t) => t,
            Err(e) => {
                eprintln!("berth warm: cannot read {}: {e}", path.display());
                return ExitCode::from(2);
            }
        };
        texts.extend(
            berth::warm::refs_in_file(&text)
                .map(|(line, r)| (format!("{}:{line}", path.display()), r.to_owned())),
        );
    }
    let credentials = match warm_credentials(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("berth warm: {e}");
            return ExitCode::from(2);
        }
    };
    let mut refs: Vec<ImageRef> = Vec::new();
    let mut bad = false;
    for (source, text) in &texts {
        match text.parse::<ImageRef>() {
            Ok(r) if refs.contains(&r) => {}
            Ok(r) => refs.push(r),
            Err(e) => {
                eprintln!("berth warm: {source}: {e}");
                bad = true;
            }
        }
    }
    if bad {
        return ExitCode::from(2);
    }
    if refs.is_empty() {
        eprintln!("berth warm: no image references given (as arguments or with --file)");
        return ExitCode::from(2);
    }
    if let Some(url) = &args.url {
        let asked = admin::WarmRequest {
            images: refs,
            platforms: args.platform,
            referrers: args.referrers,
        };
        return warm_via_api(args.config.as_deref(), url, args.ca_file.as_deref(), &asked);
    }
    let server = match &args.server {
        Some(s) => match berth::warm::parse_server(s) {
            Ok(u) => u,
            Err(e) => {
                eprintln!("berth warm: {e}");
                return ExitCode::from(2);
            }
        },
        None => match load(args.config.as_deref()) {
            Ok(cfg) => berth::warm::server_url(&cfg.server),
            Err(code) => return code,
        },
    };
    let opts = Options {
        server,
        ca_file: args.ca_file,
        jobs: usize::from(args.jobs),
        platforms: args.platform,
        live: Options::on_terminal(),
        credentials,
    };
    let warmer = match Warmer::new(&opts) {
        Ok(w) => w.with_referrers(args.referrers),
        Err(e) => {
            eprintln!("berth warm: {e}");
            return ExitCode::from(2);
        }
    };
    // One thread is plenty: warm waits on sockets and hashes only manifests.
    let summary = match runtime(false) {
        Ok(rt) => rt.block_on(warmer.run(&refs)),
        Err(code) => return code,
    };
    println!("{summary}");
    ExitCode::from(summary.exit_code())
}

/// `berth warm --url`: the admin API warms; its answer printed as a local run prints it.
fn warm_via_api(
    config: Option<&std::path::Path>,
    url: &str,
    ca_file: Option<&std::path::Path>,
    asked: &admin::WarmRequest,
) -> ExitCode {
    let cfg = match load(config) {
        Ok(cfg) => cfg,
        Err(code) => return code,
    };
    let (at, token) = match admin::cli::Mode::choose(&cfg, false, Some(url), ca_file) {
        Ok(admin::cli::Mode::Api { at, token }) => (at, token),
        // `choose` answers a --url with the API or an error; never the directory.
        Ok(admin::cli::Mode::Direct) => {
            eprintln!("berth warm: --url needs [admin] in the config");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("berth warm: {e}");
            return ExitCode::from(2);
        }
    };
    let answer = match runtime(false) {
        Ok(rt) => rt.block_on(admin::cli::warm(&at, &token, asked)),
        Err(code) => return code,
    };
    match answer {
        Ok(warmed) => {
            for image in &warmed.warmed {
                println!("warmed {image}");
            }
            for f in &warmed.failed {
                eprintln!("failed {}: {}", f.image, f.reason);
            }
            let summary = warmed.summary();
            println!("{summary}");
            ExitCode::from(summary.exit_code())
        }
        Err(e) => {
            eprintln!("berth warm: {e}");
            ExitCode::from(2)
        }
    }
}

async fn serve(cfg: Config, source: Option<PathBuf>, logging: Logging) -> ExitCode {
    let notifier = berth::sdnotify::Notifier::from_env();
    notifier.status("starting");
    let server = match Server::bind(&cfg).await {
        Ok(s) => s
            .log_requests_to(logging.request_log)
            .json_request_log(logging.json)
            .notify_to(notifier.clone()),
        Err(e) => {
            tracing::error!("cannot start: {e}");
            eprintln!("berth: cannot start: {e}");
            notifier.send(&format!("STATUS=cannot start: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let reloader = std::sync::Arc::new(server.reloader().with_log_level(logging.level));
    let reloads = reload_on_hangup(reloader, source.clone());
    let shutdown = shutdown_signal();
    let scheme = if server.is_tls() { "https" } else { "http" };
    let metrics_scheme = if server.metrics_is_tls() {
        "https"
    } else {
        "http"
    };
    tracing::info!(
        config = %source.as_ref().map_or("<embedded default>".into(), |p| p.display().to_string()),
        registry = %format!("{scheme}://{}", server.local_addr()),
        metrics = %server.metrics_addr().map_or("off".into(), |a| format!("{metrics_scheme}://{a}/metrics")),
        admin_socket = %server.admin_socket().map_or("off".into(), |p| p.display().to_string()),
        cache = %cfg.storage.path.display(),
        upstreams = %cfg.upstreams.iter().map(|u| format!("{}={}{}", u.name, u.url, if u.default { " (default)" } else { "" })).collect::<Vec<_>>().join(", "),
        "berth {} listening",
        env!("CARGO_PKG_VERSION")
    );
    let result = server.run(shutdown).await;
    reloads.abort();
    if let Err(e) = result {
        tracing::error!("cannot start: {e}");
        eprintln!("berth: cannot start: {e}");
        return ExitCode::FAILURE;
    }
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// On each SIGHUP, reloads the config file (and the TLS pair); one reload at a time, in order.
fn reload_on_hangup(
    reloader: std::sync::Arc<berth::reload::Reloader>,
    source: Option<PathBuf>,
) -> tokio::task::JoinHandle<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let hup = signal(SignalKind::hangup());
    tokio::spawn(async move {
        let mut hup = match hup {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!("cannot watch SIGHUP ({e}); reload needs a restart");
                return;
            }
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP received");
            match &source {
                Some(path) => {
                    let _ = reloader.reload_file(path).await;
                }
                None => tracing::warn!(
                    "SIGHUP: berth runs on its embedded default (no --config); nothing to reload"
                ),
            }
        }
    })
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is called, not when the
/// future is first polled, so a signal that comes right after start-up is not lost.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = int.recv() => tracing::info!("SIGINT received"),
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!("cannot watch signals ({e}); stop with Ctrl-C");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

/// What `serve` gets from [`init_logging`].
struct Logging {
    /// Request lines go here directly (see `berth::logwriter`), when not colouring.
    request_log: Option<berth::logwriter::BatchWriter>,
    json: bool,
    /// Changes the level filter on reload.
    level: berth::reload::LogLevel,
}

/// Logs to stderr at `[log] level` (RUST_LOG, when set, wins), as text or JSON lines. Lines are
/// gathered in a buffer and written by one thread in batches (`berth::logwriter`), so a request
/// never waits on stderr and one line per request stays cheap at tens of thousands of requests a
/// second. The returned guard writes what is left on exit. Without colours (not a terminal, or
/// JSON), request lines go to the writer directly, skipping the subscriber's formatting.
fn init_logging(cfg: &berth::config::LogConfig) -> (berth::logwriter::Guard, Logging) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::{EnvFilter, fmt, reload};
    let from_env = std::env::var("RUST_LOG").is_ok_and(|v| !v.is_empty());
    let filter = match from_env {
        true => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        // Validated with the config.
        false => EnvFilter::builder()
            .parse(&cfg.level)
            .unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let (filter, handle) = reload::Layer::new(filter);
    let json = cfg.format == berth::config::LogFormat::Json;
    let ansi = !json && std::io::stderr().is_terminal();
    let (writer, guard) =
        berth::logwriter::BatchWriter::spawn(std::io::stderr(), Default::default());
    let text_layer = (!json).then(|| fmt::layer().with_ansi(ansi).with_writer(writer.clone()));
    let json_layer = json.then(|| {
        fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(writer.clone())
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(text_layer)
        .with(json_layer)
        .init();
    let level: berth::reload::LogLevel = Box::new(move |level: &str| {
        if from_env {
            return Err("RUST_LOG is set and wins over [log] level".into());
        }
        let filter = EnvFilter::builder()
            .parse(level)
            .map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    });
    (
        guard,
        Logging {
            request_log: (!ansi).then_some(writer),
            json,
            level,
        },
    )
}

/// `berth health`: one GET with a deadline. Exit 0 on 2xx, 1 on anything else, 2 on a bad URL.
async fn health(
    url: &str,
    timeout: std::time::Duration,
    ca_file: Option<&std::path::Path>,
) -> ExitCode {
    use http_body_util::{BodyExt as _, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let uri = match url.parse::<http::Uri>() {
        Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) => u,
        _ => {
            eprintln!("berth: health: {url:?} is not an http:// or https:// URL");
            return ExitCode::from(2);
        }
    };
    let connector = match berth::upstream::connect::https_connector(ca_file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("berth: health: --ca-file: {e}");
            return ExitCode::from(2);
        }
    };
    let client: Client<_, Empty<bytes::Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector);
    let probe = async {
        let resp = client.get(uri).await.map_err(|e| berth::error::chain(&e))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((status, body.to_bytes()))
    };
    match tokio::time::timeout(timeout, probe).await {
        Ok(Ok((status, body))) if status.is_success() => {
            println!("{status} {}", String::from_utf8_lossy(&body).trim_end());
            ExitCode::SUCCESS
        }
        Ok(Ok((status, body))) => {
            eprintln!(
                "berth: health: {url}: {status} {}",
                String::from_utf8_lossy(&body).trim_end()
            );
            ExitCode::from(1)
        }
        Ok(Err(e)) => {
            eprintln!("berth: health: {url}: {e}");
            ExitCode::from(1)
        }
        Err(_) => {
            eprintln!("berth: health: {url}: no answer within {timeout:?}");
            ExitCode::from(1)
        }
    }
}
