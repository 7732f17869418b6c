//! The `gatehouse` binary: parse the command line, set up logging, hand over to the library.

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit code for an invalid config: EX_USAGE from sysexits.h, distinct from runtime failures (1).
const EXIT_BAD_CONFIG: u8 = 64;

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
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        #[arg(long, short, default_value = "config/gatehouse.toml")]
        config: PathBuf,
    },
    /// Validate a config file and exit (0 = valid).
    Check {
        #[arg(long, short, default_value = "config/gatehouse.toml")]
        config: PathBuf,
    },
    /// List the certificates of the config's TLS sites: names, issuer, expiry.
    Certs {
        #[arg(long, short, default_value = "config/gatehouse.toml")]
        config: PathBuf,
    },
    /// Validate the config, then ask the running Gatehouse to reload it (POST /reload on its
    /// admin listener).
    Reload {
        #[arg(long, short, default_value = "config/gatehouse.toml")]
        config: PathBuf,
        /// The admin listener to ask; default `[listen] admin` from the config.
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
    },
    /// Print the version.
    Version,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
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
        Command::Certs { config } => match gatehouse::app::certificates(&config) {
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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
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
