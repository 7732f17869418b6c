//! The `gatehouse` binary: parse the command line, set up logging, hand over to the library.

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit code for an invalid config: EX_USAGE from sysexits.h, distinct from runtime failures (1).
const EXIT_BAD_CONFIG: u8 = 64;
/// The shipped config, relative to the working directory (the repository's root for `cargo run`).
const DEFAULT_CONFIG: &str = "config/gatehouse.toml";

#[derive(Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "A reverse proxy and edge gateway"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Without one: `run` on config/gatehouse.toml.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate a config file and exit (0 = valid).
    Check {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// List the certificates of the config's TLS sites: names, issuer, expiry.
    Certs {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[command(subcommand)]
        action: Option<CertsCommand>,
    },
    /// Validate the config, then ask the running Gatehouse to reload it (POST /reload on its
    /// admin listener).
    Reload {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The admin listener to ask; default `[listen] admin` from the config.
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
    },
    /// Probe a running Gatehouse: exit 0 if ready, 1 if it answers not ready, 69 if it cannot be
    /// reached in time, 64 for a bad config.
    Health {
        /// Take `[listen] admin` from this config (only its `[listen]` is checked).
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The admin listener to ask; the config is then not read at all.
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
        /// Give up after this long, connecting and answering together.
        #[arg(long, default_value = "2s", value_parser = duration)]
        timeout: std::time::Duration,
        /// Ask `/live` (the process serves) instead of `/ready`.
        #[arg(long)]
        live: bool,
    },
    /// `[cluster]`: ask a running instance about the members it shares a store with.
    Cluster {
        #[command(subcommand)]
        action: ClusterCommand,
    },
    /// Read a password from standard input (up to the first newline) and print its argon2id
    /// hash, for `basic_auth` `users` or a `users_file` line (`alice:HASH`).
    HashPassword,
    /// Print the version.
    Version,
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Check what would stop each ACME site's order (names, HTTP-01 reachability, CAA,
    /// state_dir, rate limits, DNS provider): exit 0 when all is well, 1 if a problem was
    /// found, 64 for a bad config.
    Doctor {
        /// The config; default: the one `certs` names (config/gatehouse.toml).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The port the CA's HTTP-01 validation connects to: 80 for public CAs; a test CA
        /// (Pebble's `-httpPort`) may use another.
        #[arg(long, default_value_t = gatehouse::acme::doctor::HTTP01_PORT)]
        http_port: u16,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Members, store health, config agreement, leases and fallbacks (GET /cluster on the admin
    /// listener): exit 0 when the store answers and every member agrees, 1 if not, 69 if the
    /// instance cannot be asked, 64 for a bad config.
    Status {
        /// Take `[listen] admin` from this config (only its `[listen]` is checked).
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The admin listener to ask; the config is then not read at all.
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let command = cli.command.unwrap_or_else(|| Command::Run {
        config: PathBuf::from(DEFAULT_CONFIG),
    });
    match command {
        Command::HashPassword => match hash_password() {
            Ok(hash) => {
                out(&format!("{hash}\n"));
                ExitCode::SUCCESS
            }
            Err(e) => {
                err(&e);
                ExitCode::FAILURE
            }
        },
        Command::Version => {
            out(&format!("gatehouse {}\n", env!("CARGO_PKG_VERSION")));
            ExitCode::SUCCESS
        }
        Command::Check { config } => match gatehouse::check(&config) {
            Ok(_) => {
                out(&format!("{}: ok\n", config.display()));
                ExitCode::SUCCESS
            }
            Err(e) => {
                err(&e);
                ExitCode::from(EXIT_BAD_CONFIG)
            }
        },
        Command::Certs {
            config,
            action:
                Some(CertsCommand::Doctor {
                    config: own,
                    http_port,
                }),
        } => doctor(&own.unwrap_or(config), http_port),
        Command::Certs { config, .. } => match gatehouse::app::certificates(&config) {
            Ok(rows) => {
                out(&gatehouse::app::certificate_table(&rows));
                ExitCode::SUCCESS
            }
            Err(e) => {
                err(&e);
                ExitCode::from(EXIT_BAD_CONFIG)
            }
        },
        Command::Reload { config, admin } => match gatehouse::app::request_reload(&config, admin) {
            Ok(answer) => {
                out(&answer);
                ExitCode::SUCCESS
            }
            Err(gatehouse::app::ReloadError::Config(e)) => {
                err(&e);
                ExitCode::from(EXIT_BAD_CONFIG)
            }
            Err(e) => {
                err(&e);
                ExitCode::FAILURE
            }
        },
        Command::Cluster {
            action: ClusterCommand::Status { config, admin },
        } => cluster_status(&config, admin),
        Command::Health {
            config,
            admin,
            timeout,
            live,
        } => {
            use gatehouse::admin::probe::{health, Endpoint};
            let endpoint = if live {
                Endpoint::Live
            } else {
                Endpoint::Ready
            };
            match health(&config, admin, endpoint, timeout) {
                Ok(healthy) => {
                    out(&format!("{healthy}\n"));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    err(&e);
                    ExitCode::from(e.exit_code())
                }
            }
        }
        Command::Run { config } => match gatehouse::run(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(gatehouse::AppError::Config(e)) => {
                err(&e);
                ExitCode::from(EXIT_BAD_CONFIG)
            }
            Err(e) => {
                tracing::error!(error = %e, "gatehouse stopped");
                ExitCode::FAILURE
            }
        },
    }
}

/// `gatehouse certs doctor`: the report on stdout; 0 all well, 1 problems, 64 bad config.
fn doctor(config: &std::path::Path, http_port: u16) -> ExitCode {
    use gatehouse::acme::doctor::{run, DoctorError};
    match run(config, http_port) {
        Ok(report) => {
            out(&report.to_string());
            if report.problems() == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(DoctorError::Config(e)) => {
            err(&e);
            ExitCode::from(EXIT_BAD_CONFIG)
        }
        Err(e) => {
            err(&e);
            ExitCode::FAILURE
        }
    }
}

/// `gatehouse cluster status`: the table on stdout; 0 all well, 1 store down or disagreement.
fn cluster_status(config: &std::path::Path, admin: Option<std::net::SocketAddr>) -> ExitCode {
    use gatehouse::cluster::status::{fetch, table};
    match fetch(config, admin) {
        Ok(view) => {
            out(&table(&view));
            if view.healthy() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            err(&e);
            ExitCode::from(e.exit_code())
        }
    }
}

/// The password on stdin (its first line, without the line end), hashed. An empty one is
/// refused: it is a mistake far more often than a choice.
fn hash_password() -> Result<String, String> {
    use std::io::BufRead;
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the password from standard input: {e}"))?;
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        return Err(
            "no password on standard input; e.g. `printf '%s' 's3cret' | gatehouse hash-password`"
                .to_string(),
        );
    }
    gatehouse::middleware::basic_auth::hash_password(password.as_bytes())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

/// `--timeout 2s`: the config's duration syntax.
fn duration(text: &str) -> Result<std::time::Duration, String> {
    gatehouse::config::units::parse_duration(text)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("expected {}", gatehouse::config::units::DURATION_HINT))
}

/// stdout/stderr writes that tolerate a closed pipe (`gatehouse check | head -1`): `print!`
/// would panic there.
fn out(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().write_all(text.as_bytes());
}

fn err(e: &dyn std::fmt::Display) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{e}");
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // colour only for a terminal: `docker logs` and journald would show the escape codes
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        // a failed write (stderr closed: a log collector gone) would otherwise be reported with
        // eprintln!, which panics on that same closed stderr, inside whatever request logged
        .log_internal_errors(false)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}
