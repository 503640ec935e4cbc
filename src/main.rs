//! The `ringgate` command line (DESIGN.md §5).

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use ringgate::config::{self, RouteAction, Snapshot};
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
    /// A reverse proxy with no config file, like `caddy reverse-proxy`.
    ///
    /// Every request on FROM goes to the TO targets (round robin, passive health):
    /// `ringgate proxy --from 127.0.0.1:8080 --to 127.0.0.1:9001,127.0.0.1:9002`.
    /// `https://HOST:PORT` targets are reached over TLS (verified against the system roots).
    Proxy {
        /// Address to listen on, e.g. 0.0.0.0:8080.
        #[arg(long)]
        from: String,
        /// Comma-separated targets: HOST:PORT, http://HOST:PORT or https://HOST:PORT.
        #[arg(long, value_delimiter = ',', required = true)]
        to: Vec<String>,
        /// An admin listener (loopback), e.g. 127.0.0.1:9901.
        #[arg(long)]
        admin: Option<String>,
    },
    /// Run the gateway on the demo config with built-in echo origins on loopback.
    Demo {
        /// Use this config instead of the built-in config/demo.toml; every loopback upstream
        /// target gets a built-in echo origin.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// A live terminal view of a running gateway, from its admin `/metrics`.
    ///
    /// Requests/s, 5xx rate, p50/p99 per route and target health. Uses
    /// $RINGGATE_ADMIN_TOKEN when set.
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
    /// Write the man pages (ringgate.1 and one per subcommand), generated from this
    /// command line's own definition, into DIR (docs/man in the repository).
    #[command(hide = true)]
    Man {
        /// Folder to write the pages into.
        #[arg(long, default_value = "docs/man")]
        dir: PathBuf,
    },
    /// Run a tiny fast origin: echoes bodies, `/bytes/N`, `/headers`, `/delay/MS`.
    Echo {
        /// Address to listen on, e.g. 127.0.0.1:9001.
        #[arg(long)]
        bind: SocketAddr,
        /// Threads, each with its own SO_REUSEPORT listener.
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// Speak TLS with a new self-signed certificate for localhost and 127.0.0.1 (its
        /// path is printed: give it to a gateway upstream as `tls_ca_file`).
        #[arg(long)]
        tls: bool,
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
        Command::Proxy { from, to, admin } => match proxy_config(&from, &to, admin.as_deref()) {
            Ok(text) => match config::load_str(Path::new("ringgate proxy"), &text) {
                Ok(mut snapshot) => {
                    snapshot.reloadable = false;
                    run(Arc::new(snapshot))
                }
                Err(e) => fail(e),
            },
            Err(e) => fail(format!("proxy: {e}")),
        },
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
        Command::Echo { bind, workers, tls } => echo_command(bind, workers, tls),
        Command::Man { dir } => match write_man_pages(&dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(format!("man: {}: {e}", dir.display())),
        },
    }
}

/// `ringgate.1` and `ringgate-SUB.1` for every visible subcommand. No date and the plain
/// package version: the pages change only when the command line does.
fn write_man_pages(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let top = Cli::command();
    let mut page = Vec::new();
    clap_mangen::Man::new(top.clone()).render(&mut page)?;
    std::fs::write(dir.join("ringgate.1"), page)?;
    for sub in top.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name: &'static str = format!("ringgate-{}", sub.get_name()).leak();
        let mut page = Vec::new();
        let sub = sub.clone().name(name).version(env!("CARGO_PKG_VERSION"));
        clap_mangen::Man::new(sub).render(&mut page)?;
        std::fs::write(dir.join(format!("{name}.1")), page)?;
    }
    Ok(())
}

/// The config `ringgate proxy` runs: one listener, one upstream, one catch-all route. Every
/// value is checked by the config loader afterwards; here only the scheme is taken apart.
fn proxy_config(from: &str, to: &[String], admin: Option<&str>) -> Result<String, String> {
    // JSON string escapes are TOML basic-string escapes, but for DEL, which TOML forbids raw.
    let quote = |v: &str| {
        serde_json::to_string(v)
            .unwrap_or_default()
            .replace('\u{7f}', "\\u007f")
    };
    let mut tls = None;
    let mut targets = Vec::new();
    for target in to.iter().map(|t| t.trim()).filter(|t| !t.is_empty()) {
        let (is_tls, addr) = match target.split_once("://") {
            Some(("http", rest)) => (false, rest),
            Some(("https", rest)) => (true, rest),
            Some((scheme, _)) => {
                return Err(format!(
                    "--to {target}: scheme {scheme:?} is not http or https"
                ));
            }
            None => (false, target),
        };
        let addr = addr.trim_end_matches('/');
        if addr.contains('/') {
            return Err(format!(
                "--to {target}: a target is HOST:PORT, without a path"
            ));
        }
        if tls.is_some_and(|t| t != is_tls) {
            return Err("--to: targets must all be http or all https".into());
        }
        tls = Some(is_tls);
        targets.push(quote(addr));
    }
    if targets.is_empty() {
        return Err("--to: at least one target".into());
    }
    let admin = admin
        .map(|a| format!("[admin]\nbind = {}\n\n", quote(a)))
        .unwrap_or_default();
    Ok(format!(
        "{admin}[[listeners]]\nname = \"proxy\"\nbind = {}\n\n[[upstreams]]\nname = \"to\"\ntargets = [{}]\ntls = {}\n\n[[routes]]\nname = \"all\"\npath_prefix = \"/\"\nupstream = \"to\"\n",
        quote(from),
        targets.join(", "),
        tls.unwrap_or(false)
    ))
}

fn echo_command(bind: SocketAddr, workers: usize, tls: bool) -> ExitCode {
    let config = if tls {
        let made = echo::self_signed("echo", &[bind.ip().to_string()])
            .and_then(|(cert, key)| echo::server_config(&cert, &key).map(|c| (cert, c)));
        match made {
            Ok((cert, config)) => {
                println!("ringgate echo: self-signed certificate {}", cert.display());
                Some(config)
            }
            Err(e) => return fail(format!("echo: {e}")),
        }
    } else {
        None
    };
    let scheme = if tls { "https" } else { "http" };
    match echo::spawn(bind, workers, config) {
        Ok(threads) => {
            println!("ringgate echo listening on {scheme}://{bind}");
            for t in threads {
                let _ = t.join();
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!("echo: cannot bind {bind}: {e}")),
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
    let load = || match &path {
        Some(p) => config::load(p),
        None => config::load_str(Path::new("config/demo.toml"), DEMO_CONFIG).map(|mut s| {
            s.reloadable = false;
            s
        }),
    };
    let mut snapshot = match load() {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    // Every loopback target gets an echo origin; a TLS upstream's speak TLS.
    let mut origins: Vec<(SocketAddr, bool)> = Vec::new();
    for u in &snapshot.upstreams {
        for t in &u.targets {
            if t.addr.ip().is_loopback() && !origins.iter().any(|(a, _)| *a == t.addr) {
                origins.push((t.addr, u.tls.is_some()));
            }
        }
    }
    let tls = if origins.iter().any(|&(_, tls)| tls) {
        let config = match demo_tls(&snapshot) {
            Ok(config) => config,
            Err(e) => return fail(format!("demo: TLS origins: {e}")),
        };
        // Compiled again: its TLS upstreams now trust the demo certificate (as every reload's
        // compile will).
        snapshot = match load() {
            Ok(s) => s,
            Err(e) => return fail(e),
        };
        Some(config)
    } else {
        None
    };
    for &(addr, is_tls) in &origins {
        let config = if is_tls { tls.clone() } else { None };
        if let Err(e) = echo::spawn(addr, 1, config) {
            return fail(format!("demo: cannot start the echo origin on {addr}: {e}"));
        }
    }
    let snapshot = Arc::new(snapshot);
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

/// A self-signed certificate for the demo's TLS origins, for the names the TLS upstreams
/// check, trusted from now on by every verifying upstream that names no CA of its own.
/// Returns the origins' server config.
fn demo_tls(snapshot: &Snapshot) -> Result<Arc<rustls::ServerConfig>, String> {
    let names: Vec<String> = snapshot
        .upstreams
        .iter()
        .zip(&snapshot.source.upstreams)
        .filter(|(u, _)| u.tls.is_some())
        .filter_map(|(u, source)| {
            let first = u.targets.first()?;
            Some(source.tls_server_name.clone().unwrap_or_else(|| {
                let label = first.label.as_str();
                let host = label.rsplit_once(':').map_or(label, |(h, _)| h);
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string()
            }))
        })
        .collect();
    let (cert, key) = echo::self_signed("demo", &names)?;
    ringgate::tls::trust_also(&cert)?;
    echo::server_config(&cert, &key)
}

fn print_demo_help(snapshot: &Snapshot, origins: &[(SocketAddr, bool)]) {
    let Some(listener) = snapshot.listeners.first() else {
        return;
    };
    let (scheme, insecure) = match listener.tls {
        Some(_) => ("https", "-k "),
        None => ("http", ""),
    };
    let base = format!("{scheme}://{}", listener.addr);
    let origins: Vec<String> = origins
        .iter()
        .map(|(a, tls)| format!("{}://{a}", if *tls { "https" } else { "http" }))
        .collect();
    println!(
        "ringgate demo: gateway on {base}, echo origins on {}",
        origins.join(", ")
    );
    println!("Try:");
    let mut echo_path = None;
    for route in &snapshot.routes {
        let host = route
            .host
            .as_ref()
            .map(|h| format!("-H 'Host: {}' ", h.replace('*', "demo")))
            .unwrap_or_default();
        let proxied = matches!(route.action, RouteAction::Proxy { .. });
        let path = match &route.path {
            PathMatch::Exact(p) => p.clone(),
            PathMatch::Prefix(p) if proxied => format!("{}/headers", p.trim_end_matches('/')),
            PathMatch::Prefix(p) => p.clone(),
        };
        if proxied
            && route.host.is_none()
            && echo_path.is_none()
            && let PathMatch::Prefix(p) = &route.path
        {
            echo_path = Some(format!("{}/echo", p.trim_end_matches('/')));
        }
        println!(
            "  curl -i {insecure}{host}{base}{path}    # route {:?}",
            route.name
        );
    }
    if let Some(p) = echo_path {
        println!(
            "  curl -i {insecure}-X POST --data 'hello' {base}{p}    # the origin echoes the body"
        );
    }
    let catch_all = snapshot
        .routes
        .iter()
        .any(|r| r.host.is_none() && matches!(&r.path, PathMatch::Prefix(p) if p == "/"));
    if !catch_all {
        println!("  curl -i {insecure}{base}/nope    # no route: 404 with a JSON error");
    }
    if let Some(admin) = snapshot.admin {
        println!(
            "  curl -s http://{admin}/upstreams    # which origin is healthy and how many requests each answered (x-origin says which answered)"
        );
    }
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
