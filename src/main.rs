//! The `ringgate` command line (DESIGN.md §5).

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use ringgate::config::{self, Snapshot};
use ringgate::route::PathMatch;
use ringgate::{control, echo, observe};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// A thread-per-core API gateway and reverse proxy.
#[derive(Parser)]
#[command(name = "ringgate", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway on a config file.
    Run {
        /// The TOML config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Bind listener addresses another process already serves (a deliberate hand-over,
        /// e.g. a binary upgrade: both share the connections until the old one is stopped).
        /// Without it, ringgate refuses to start on a served address.
        #[arg(long)]
        handover: bool,
    },
    /// Validate a config file: print every problem and exit 1, or a summary and exit 0.
    Check {
        #[arg(long, short)]
        config: PathBuf,
        /// Fail (exit 1) on warnings too: risky or useless settings such as an upstream no
        /// route uses or `tls_verify = false`.
        #[arg(long)]
        strict: bool,
    },
    /// Run the gateway on the demo config with built-in echo origins on loopback.
    Demo {
        /// Use this config instead of the built-in config/demo.toml; every loopback upstream
        /// target gets a built-in echo origin.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// A terminal view of a running gateway (requests/s, 5xx rate, p50/p99 per route, target
    /// health), read from its admin `/metrics`. Uses $RINGGATE_ADMIN_TOKEN when set.
    Top {
        /// The gateway's admin address, e.g. 127.0.0.1:9901.
        #[arg(long)]
        admin: SocketAddr,
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Stop after this many refreshes (printed one after another, without clearing).
        #[arg(long)]
        count: Option<u64>,
    },
    /// Print a new API key (shown once) and the config line with its SHA-256.
    Keygen {
        /// The consumer the key is for (its [[consumers]] name).
        #[arg(long)]
        consumer: String,
        /// A name for the key (default: CONSUMER-YYYYMMDD).
        #[arg(long)]
        id: Option<String>,
    },
    /// Run a tiny fast origin: echoes bodies, `/bytes/N`, `/headers`, `/delay/MS`.
    Echo {
        /// Address to listen on, e.g. 127.0.0.1:9001.
        #[arg(long)]
        bind: SocketAddr,
        /// Threads, each with its own SO_REUSEPORT listener.
        #[arg(long, default_value_t = 1)]
        workers: usize,
    },
}

const DEMO_CONFIG: &str = include_str!("../config/demo.toml");

fn main() -> ExitCode {
    let matches = Cli::command().version(version_line()).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match cli.command {
        Command::Run { config, handover } => match config::load(&config) {
            Ok(snapshot) => {
                ringgate::control::reload::HANDOVER
                    .store(handover, std::sync::atomic::Ordering::Relaxed);
                run(Arc::new(snapshot))
            }
            Err(e) => fail(e),
        },
        Command::Check { config, strict } => check(&config, strict),
        Command::Demo { config } => demo(config),
        Command::Top {
            admin,
            interval,
            count,
        } => {
            let token = std::env::var("RINGGATE_ADMIN_TOKEN").ok();
            let interval = std::time::Duration::from_secs_f64(interval.clamp(0.05, 3600.0));
            match ringgate::admin::top::run(admin, token.as_deref(), interval, count) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(format!("top: {e}")),
            }
        }
        Command::Keygen { consumer, id } => keygen(&consumer, id),
        Command::Echo { bind, workers } => match echo::spawn(bind, workers) {
            Ok(threads) => {
                println!("ringgate echo listening on http://{bind}");
                for t in threads {
                    let _ = t.join();
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(format!("echo: cannot bind {bind}: {e}")),
        },
    }
}

/// `ringgate --version`: the release, the commit and date it was built from, and whether this
/// kernel lets ringgate use io_uring (else shards fall back to epoll, loudly).
fn version_line() -> &'static str {
    let driver = if monoio::utils::detect_uring() {
        "io_uring available"
    } else {
        "io_uring unavailable here: epoll fallback"
    };
    let line = format!(
        "{} (commit {}, built {}; {driver})",
        env!("CARGO_PKG_VERSION"),
        env!("RINGGATE_COMMIT"),
        env!("RINGGATE_BUILD_DATE"),
    );
    Box::leak(line.into_boxed_str())
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("{message}");
    ExitCode::FAILURE
}

fn run(snapshot: Arc<Snapshot>) -> ExitCode {
    observe::log::set_format(snapshot.source.server.log_format);
    for line in snapshot.warning_lines() {
        observe::warn(&line);
    }
    let running = match control::start(&snapshot) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    for l in &snapshot.listeners {
        let scheme = if l.tls.is_some() { "https" } else { "http" };
        let redirect = match l.redirect_https {
            Some(port) => format!(", redirecting to https on port {port}"),
            None => String::new(),
        };
        observe::info(&format!(
            "listening on {scheme}://{} ({} shards{redirect})",
            l.addr, snapshot.workers
        ));
    }
    match running.serve_until_signalled() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn check(path: &Path, strict: bool) -> ExitCode {
    match config::load(path) {
        Ok(s) => {
            for line in s.warning_lines() {
                eprintln!("warning: {line}");
            }
            if strict && !s.warnings.is_empty() {
                eprintln!(
                    "{}: {} warnings (--strict)",
                    path.display(),
                    s.warnings.len()
                );
                return ExitCode::FAILURE;
            }
            println!(
                "{}: ok: {} listeners, {} upstreams, {} routes, {} workers",
                path.display(),
                s.listeners.len(),
                s.upstreams.len(),
                s.routes.len(),
                s.workers
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn demo(path: Option<PathBuf>) -> ExitCode {
    let loaded = match &path {
        Some(p) => config::load(p),
        None => config::load_str(Path::new("config/demo.toml"), DEMO_CONFIG),
    };
    let snapshot = match loaded {
        Ok(s) => Arc::new(s),
        Err(e) => return fail(e),
    };
    let mut origins: Vec<SocketAddr> = Vec::new();
    for u in &snapshot.upstreams {
        for t in &u.targets {
            if t.addr.ip().is_loopback() && !origins.contains(&t.addr) {
                origins.push(t.addr);
            }
        }
    }
    for addr in &origins {
        if let Err(e) = echo::spawn(*addr, 1) {
            return fail(format!("demo: cannot start the echo origin on {addr}: {e}"));
        }
    }
    let running = match control::start(&snapshot) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    print_demo_help(&snapshot, &origins);
    match running.serve_until_signalled() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn print_demo_help(snapshot: &Snapshot, origins: &[SocketAddr]) {
    let Some(listener) = snapshot.listeners.first() else {
        return;
    };
    let base = format!("http://{}", listener.addr);
    let origins: Vec<String> = origins.iter().map(|o| o.to_string()).collect();
    println!(
        "ringgate demo: gateway on {base}, echo origins on {}",
        origins.join(", ")
    );
    println!("Try:");
    for route in &snapshot.routes {
        let host = route
            .host
            .as_ref()
            .map(|h| format!("-H 'Host: {}' ", h.replace('*', "demo")))
            .unwrap_or_default();
        let path = match &route.path {
            PathMatch::Exact(p) => p.clone(),
            PathMatch::Prefix(p) => format!("{}/headers", p.trim_end_matches('/')),
        };
        println!("  curl -i {host}{base}{path}    # route {:?}", route.name);
    }
    println!("  curl -i -X POST --data 'hello' {base}/api/echo    # the origin echoes the body");
    println!("  curl -i {base}/nope    # no route: 404 with a JSON error");
    println!("Stop with Ctrl-C (in-flight requests finish first).");
}

/// `ringgate keygen`: the key goes to stdout once; only its hash belongs in the config.
fn keygen(consumer: &str, id: Option<String>) -> ExitCode {
    use ringgate::auth::api_key;
    let Ok(key) = api_key::generate() else {
        eprintln!("ringgate: keygen: the OS random number generator failed");
        return ExitCode::FAILURE;
    };
    let id = id.unwrap_or_else(|| {
        let mut date = Vec::new();
        observe::access_log::push_rfc3339(&mut date, observe::unix_ms());
        let date: String = String::from_utf8_lossy(&date[..10]).replace('-', "");
        format!("{consumer}-{date}")
    });
    let hash = api_key::hex(&api_key::sha256(key.as_bytes()));
    println!("API key for {consumer:?} (shown once; give it to the client, keep no copy):");
    println!("  {key}");
    println!();
    println!("Add to the consumer's api_keys in the config:");
    println!("[[consumers]]");
    println!("name = {consumer:?}");
    println!("api_keys = [ {{ id = {id:?}, sha256 = \"{hash}\" }} ]");
    ExitCode::SUCCESS
}
