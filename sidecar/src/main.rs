//! The `fhirseal` command: parses the command line and configuration, then hands over to the
//! `fhirseal_sidecar` library.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use std::process::ExitCode;

use fhirseal_consensus::ChainCheck;
use fhirseal_sidecar::config::{Config, LogFormat, TlsConfig};
use fhirseal_sidecar::ledger_tool::LedgerTool;
use fhirseal_sidecar::verify;
use fhirseal_sidecar::{audit, telemetry, Sidecar};
use indicatif::{ProgressBar, ProgressStyle};

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
    /// Run the node: the proxy in front of the upstream FHIR server, its vault, its ledger,
    /// and its consortium membership (on the embedded default, a consortium of one).
    Run(RunArgs),
    /// Print the effective configuration (defaults, file, environment, flags) and check it.
    Config(RunArgs),
    /// Found, join and govern the node's consortium (see `fhirseal consortium --help`).
    #[command(subcommand)]
    Consortium(fhirseal_sidecar::consortium::ConsortiumCommand),
    /// Read and verify the node's ledger (with the node stopped: it holds the database).
    Ledger(LedgerArgs),
}

#[derive(Debug, Args)]
struct LedgerArgs {
    #[command(subcommand)]
    command: LedgerCommand,
    /// TOML configuration file of the node.
    #[arg(long, short, env = "FHIRSEAL_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// The node's data directory.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// The upstream FHIR base URL to check against (default: the node's configuration).
    #[arg(long, global = true)]
    upstream_url: Option<String>,
}

impl LedgerArgs {
    fn load(&self) -> anyhow::Result<Config> {
        RunArgs {
            config: self.config.clone(),
            listen: None,
            upstream: self.upstream_url.clone(),
            public_base: None,
            max_body_bytes: None,
            tls_cert: None,
            tls_key: None,
            data_dir: self.data_dir.clone(),
            log_format: None,
        }
        .load()
    }
}

#[derive(Debug, Subcommand)]
enum LedgerCommand {
    /// Blocks, tip, what waits in the outbox, the delegates.
    Status,
    /// One block as JSON: header, certificate, transactions with their entries.
    Show {
        /// The block's height.
        height: u64,
    },
    /// Re-verify the whole chain from genesis; with --upstream, also every anchored version
    /// against the upstream FHIR server. Exits with 1 when anything does not verify.
    Verify {
        /// Also compare every anchored resource version with the upstream's copy.
        #[arg(long)]
        upstream: bool,
    },
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

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(args.load()?).map(|()| ExitCode::SUCCESS),
        Command::Config(args) => {
            let config = args.load()?;
            #[allow(clippy::print_stdout)] // the command's output is the configuration
            {
                println!("{config:#?}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Consortium(command) => consortium(command).map(|()| ExitCode::SUCCESS),
        Command::Ledger(args) => ledger(args.load()?, args.command),
    }
}

/// `fhirseal ledger …`: what it prints is the command's output.
#[allow(clippy::print_stdout)]
fn ledger(config: Config, command: LedgerCommand) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let tool = LedgerTool::open(&config).await?;
        let ledger = tool.ledger();
        match command {
            LedgerCommand::Status => {
                let status = ledger.status()?;
                println!("institution      {}", status.institution);
                println!("blocks           {}", status.blocks);
                if let (Some(hash), Some(time)) = (&status.tip_hash, status.tip_time_ms) {
                    println!("tip              height {} hash {hash}", status.blocks - 1);
                    println!("tip time         {}", audit::instant(time));
                }
                println!("pending anchors  {}", status.pending_anchors);
                println!("pending access   {}", status.pending_access_events);
                for delegate in &status.delegates {
                    println!("delegate         {delegate}");
                }
                Ok(ExitCode::SUCCESS)
            }
            LedgerCommand::Show { height } => match ledger.block(height)? {
                Some(block) => {
                    // Whoever runs this holds the node's data directory: its institution's audit
                    // trail is theirs (other members' access events are withheld, as at the API).
                    println!(
                        "{:#}",
                        verify::block_json(&block, Some(ledger.institution()))
                    );
                    Ok(ExitCode::SUCCESS)
                }
                None => anyhow::bail!("no block at height {height}"),
            },
            LedgerCommand::Verify { upstream } => {
                let blocks = ledger.status()?.blocks;
                let bar = progress(blocks, "blocks");
                let check = tool.verify_chain(|height| bar.set_position(height + 1))?;
                bar.finish_and_clear();
                let mut sound = match check {
                    ChainCheck::Valid { blocks } => {
                        println!("chain: {blocks} blocks verify from genesis");
                        true
                    }
                    ChainCheck::Broken { height, fault } => {
                        println!("chain: BROKEN at height {height}: {fault}");
                        false
                    }
                };
                if upstream {
                    let versions = tool.anchored_versions()?;
                    let bar = progress(versions.len() as u64, "versions");
                    let checks = tool
                        .check_upstream(&versions, |done| bar.set_position(done as u64))
                        .await?;
                    bar.finish_and_clear();
                    let mut problems: Vec<String> =
                        checks.iter().filter_map(|c| c.problem()).collect();
                    println!(
                        "upstream: {} of {} anchored versions match {}",
                        checks.len() - problems.len(),
                        checks.len(),
                        config.upstream.url
                    );
                    let mut resources: Vec<(String, String)> =
                        versions.into_iter().map(|(t, i, _)| (t, i)).collect();
                    resources.sort();
                    resources.dedup();
                    let bar = progress(resources.len() as u64, "resources");
                    let current = tool
                        .check_current(&resources, |done| bar.set_position(done as u64))
                        .await?;
                    bar.finish_and_clear();
                    let unanchored: Vec<String> =
                        current.iter().filter_map(|c| c.problem()).collect();
                    println!(
                        "upstream: {} of {} resources have an anchored current version",
                        current.len() - unanchored.len(),
                        current.len()
                    );
                    problems.extend(unanchored);
                    // Resources of the same types that no version of is anchored.
                    let types: Vec<String> = resources
                        .iter()
                        .map(|(t, _)| t.clone())
                        .collect::<std::collections::BTreeSet<_>>()
                        .into_iter()
                        .collect();
                    let anchored: std::collections::BTreeSet<(String, String)> =
                        resources.iter().cloned().collect();
                    let spinner = ProgressBar::new_spinner();
                    let orphans = tool
                        .orphans(&types, &anchored, |seen| spinner.set_position(seen as u64))
                        .await?;
                    spinner.finish_and_clear();
                    println!(
                        "upstream: {} resources of {} never anchored (orphans)",
                        orphans.len(),
                        if types.is_empty() {
                            "no anchored type".to_owned()
                        } else {
                            types.join(", ")
                        }
                    );
                    const SHOWN: usize = 20;
                    problems.extend(
                        orphans.iter().take(SHOWN).map(|(t, i)| {
                            format!("{t}/{i} is held upstream and was never anchored")
                        }),
                    );
                    if orphans.len() > SHOWN {
                        problems.push(format!("… and {} more orphans", orphans.len() - SHOWN));
                    }
                    for problem in &problems {
                        println!("  {problem}");
                    }
                    sound &= problems.is_empty();
                }
                Ok(if sound {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                })
            }
        }
    })
}

/// A progress bar on standard error (drawn only on a terminal).
fn progress(len: u64, unit: &'static str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template(&format!("{{bar:40}} {{pos}}/{{len}} {unit} ({{eta}})"))
    {
        bar.set_style(style);
    }
    bar
}

/// `fhirseal consortium …`: the library runs it on the node the configuration names; what it
/// returns is the command's output.
fn consortium(command: fhirseal_sidecar::consortium::ConsortiumCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let env = |name: &str| std::env::var(name).ok();
    let output = runtime.block_on(fhirseal_sidecar::consortium::execute(command, &env))?;
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
            consortium = %sidecar.consortium_addr(),
            standing = sidecar.standing().name(),
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
