//! The `fhirseal` command: parses the command line and configuration, then hands over to the
//! `fhirseal_sidecar` library.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use fhirseal_sidecar::config::{Config, LogFormat, TlsConfig};
use fhirseal_sidecar::{telemetry, Sidecar};

#[derive(Debug, Parser)]
#[command(
    name = "fhirseal",
    version,
    about = "A security sidecar for FHIR servers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the sidecar in front of the upstream FHIR server.
    Run(RunArgs),
    /// Print the effective configuration (defaults, file, environment, flags) and check it.
    Config(RunArgs),
    /// Found, join, run and govern a consortium (see `fhirseal consortium --help`).
    #[command(subcommand)]
    Consortium(fhirseal_sidecar::consortium::ConsortiumCommand),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// TOML configuration file.
    #[arg(long, short, env = "FHIRSEAL_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:8088.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// The upstream FHIR base URL, e.g. http://localhost:8080/fhir.
    #[arg(long)]
    upstream: Option<String>,
    /// The base URL clients use to reach the sidecar, when behind another proxy.
    #[arg(long)]
    public_base: Option<String>,
    /// Largest request body accepted, in bytes.
    #[arg(long)]
    max_body_bytes: Option<u64>,
    /// PEM certificate chain for TLS on the listener (with --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for TLS on the listener (with --tls-cert).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Data directory for keys, vault and ledger.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long, value_parser = ["text", "json"])]
    log_format: Option<String>,
}

impl RunArgs {
    /// Defaults, then the file, then the environment, then these flags; validated.
    fn load(&self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        config.apply_env(|name| std::env::var(name).ok())?;
        if let Some(listen) = self.listen {
            config.server.listen = listen;
        }
        if let Some(upstream) = &self.upstream {
            config.upstream.url = upstream.clone();
        }
        if let Some(public_base) = &self.public_base {
            config.server.public_base = Some(public_base.clone());
        }
        if let Some(max) = self.max_body_bytes {
            config.server.max_body_bytes = max;
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            config.server.tls = Some(TlsConfig {
                cert: cert.clone(),
                key: key.clone(),
            });
        }
        if let Some(dir) = &self.data_dir {
            config.data_dir = dir.clone();
        }
        if let Some(format) = &self.log_format {
            config.log.format = if format == "json" {
                LogFormat::Json
            } else {
                LogFormat::Text
            };
        }
        config.validate()?;
        Ok(config)
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(args.load()?),
        Command::Config(args) => {
            let config = args.load()?;
            #[allow(clippy::print_stdout)] // the command's output is the configuration
            {
                println!("{config:#?}");
            }
            Ok(())
        }
        Command::Consortium(command) => consortium(command),
    }
}

fn consortium(command: fhirseal_sidecar::consortium::ConsortiumCommand) -> anyhow::Result<()> {
    if matches!(
        command,
        fhirseal_sidecar::consortium::ConsortiumCommand::Node(_)
    ) {
        // openraft reports every election and vote at info.
        let log = fhirseal_sidecar::config::LogConfig {
            filter: "info,openraft=warn".to_owned(),
            ..Default::default()
        };
        telemetry::init(&log).map_err(anyhow::Error::msg)?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let output = runtime.block_on(fhirseal_sidecar::consortium::execute(
        command,
        shutdown_signal(),
    ))?;
    #[allow(clippy::print_stdout)] // the command's output
    {
        print!("{output}");
    }
    Ok(())
}

fn run(config: Config) -> anyhow::Result<()> {
    telemetry::init(&config.log).map_err(anyhow::Error::msg)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let sidecar = Sidecar::bind(&config).await?;
        let scheme = if sidecar.is_tls() { "https" } else { "http" };
        tracing::info!(
            base = %format!("{scheme}://{}{}", sidecar.local_addr(), config.server.base_path),
            upstream = %config.upstream.url,
            "fhirseal is listening"
        );
        sidecar.serve(shutdown_signal()).await?;
        tracing::info!("fhirseal stopped");
        Ok(())
    })
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
