//! `qkd-kme-sim`: run a simulated QKD link (two ETSI GS QKD 014 KMEs), make its test PKI, or
//! steer a running one through its admin listener.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use qkd_kme_sim::certs::{self, KmeCertSpec};
use qkd_kme_sim::config::{ServeArgs, ServeConfig};
use qkd_kme_sim::{admin, AdminCommand, Simulator};

/// Time open connections get to finish after SIGTERM/SIGINT.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Parser)]
#[command(
    version,
    about = "ETSI GS QKD 014 KME pair simulator (one QKD link, two KMEs)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a test PKI: ca.pem/ca.key, NAME.pem/.key per KME, SAE_ID.pem/.key per SAE
    GenCerts {
        /// Output directory (created if missing)
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// KME server certificate; SANs are IP addresses or DNS names [default SAN: NAME]
        #[arg(long, value_name = "NAME[:SAN,SAN...]", required = true)]
        kme: Vec<KmeCertSpec>,
        /// SAE client certificate with CN = SAE_ID
        #[arg(long, value_name = "SAE_ID")]
        sae: Vec<String>,
    },
    /// Run the two KMEs of one QKD link until SIGTERM or SIGINT
    Serve {
        #[command(flatten)]
        args: Box<ServeArgs>,
        /// Log lines as text or as JSON objects (stderr; RUST_LOG sets the level)
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
    /// Send a command to a running simulator's admin listener and print its JSON answer
    Admin {
        /// Admin listener URL, e.g. http://127.0.0.1:9000
        #[arg(long)]
        url: String,
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_logging(format: LogFormat) {
    // RUST_LOG overrides, e.g. RUST_LOG=qkd_kme_sim=debug to log every request.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logger = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logger.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logger.json().init(),
    }
}

/// The error and its causes on one line, as `error: ...: ...`.
fn report(err: &dyn std::error::Error) -> ExitCode {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause = cause.to_string();
        if !line.contains(&cause) {
            line = format!("{line}: {cause}");
        }
        source = cause_of(source);
    }
    eprintln!("error: {line}");
    ExitCode::FAILURE
}

fn cause_of<'a>(
    err: Option<&'a (dyn std::error::Error + 'static)>,
) -> Option<&'a (dyn std::error::Error + 'static)> {
    err.and_then(|e| e.source())
}

async fn shutdown_signal() {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(err) => {
                tracing::error!(error = %err, "cannot watch SIGTERM; stop with SIGINT");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

fn serve(args: &ServeArgs) -> ExitCode {
    let config = match ServeConfig::load(args) {
        Ok(config) => config,
        Err(err) => return report(&err),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => return report(&err),
    };
    runtime.block_on(async {
        let simulator = match Simulator::bind(&config).await {
            Ok(simulator) => simulator,
            Err(err) => return report(&err),
        };
        let addrs = simulator.listen_addrs();
        tracing::info!(
            kme_a = %config.kme_a.id, kme_a_listen = ?addrs.kme_a, kme_a_saes = ?config.kme_a.saes,
            kme_b = %config.kme_b.id, kme_b_listen = ?addrs.kme_b, kme_b_saes = ?config.kme_b.saes,
            admin_listen = %addrs.admin.map_or_else(|| "off".to_owned(), |addr| addr.to_string()),
            key_size = config.link.key_size, key_rate = config.link.key_rate,
            max_key_count = config.link.max_key_count, journal = config.link.journal,
            deviations = ?config.link.deviations,
            "QKD link simulator serving"
        );
        simulator.run(shutdown_signal(), SHUTDOWN_GRACE).await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

fn admin_command(url: &str, command: &AdminCommand) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return report(&err),
    };
    match runtime.block_on(admin::send(url, command)) {
        Ok(answer) => {
            println!("{answer:#}");
            ExitCode::SUCCESS
        }
        Err(err) => report(&err),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::GenCerts { out, kme, sae } => match certs::write_bundle(&out, &kme, &sae) {
            Ok(_) => {
                println!("wrote test PKI to {}", out.display());
                ExitCode::SUCCESS
            }
            Err(err) => report(&err),
        },
        Command::Serve { args, log_format } => {
            init_logging(log_format);
            serve(&args)
        }
        Command::Admin { url, command } => admin_command(&url, &command),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
