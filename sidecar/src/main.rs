//! The `fhirseal` command: parses the command line and configuration, then hands over to the
//! `fhirseal_sidecar` library.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use std::process::ExitCode;

use fhirseal_consensus::ChainCheck;
use fhirseal_sidecar::check::Stage;
use fhirseal_sidecar::config::{Config, LogFormat, TlsConfig};
use fhirseal_sidecar::ledger_tool::LedgerTool;
use fhirseal_sidecar::stores;
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
    /// Verify a stopped node's stores whole: the vault (every record decrypts and matches its
    /// address, every index points at a record), the chain, the governance store. Exits with 1
    /// when anything is damaged.
    Check(NodeArgs),
    /// Copy the node's vault, chain and governance state into DIR, consistently, while it runs
    /// (through its control socket) or stopped. Keys only with --with-keys.
    Backup {
        /// A new (or empty) directory for the backup.
        dir: PathBuf,
        /// Also copy the keystore: the keys that decrypt the vault. Keep such a backup as
        /// secret as the vault itself.
        #[arg(long)]
        with_keys: bool,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Load FHIR files (Bundles such as Synthea's, single resources, NDJSON bulk-data exports;
    /// directories are walked for .json and .ndjson) through a running node, so that each
    /// resource is sealed, anchored and audited as a client's write is. Resumable: run it again
    /// after a kill and it goes on where it stopped. Exits with 1 when the node refused a batch.
    Import(ImportArgs),
    /// Seal what an existing FHIR server already holds: read every resource from it directly,
    /// write it back through the running node (which seals its identity and anchors it), then
    /// expunge the identified versions the server keeps, and report what is left. Resumable;
    /// --dry-run only reports. Exits with 1 when a resource was skipped or identity is left.
    Migrate(MigrateArgs),
    /// Measure a running node as the paper's section 4.2 evaluates it: write a Synthea corpus
    /// through it, read it back as a clinician and a researcher, and report privacy leakage,
    /// least visibility, audit traceability, recovery time, governance compliance, latency and
    /// throughput (a table; report.json and report.html in --out). Exits with 1 when identity
    /// leaked or a read saw other than the policy allows or left no trace on the chain.
    Report(ReportArgs),
    /// Bring a node back from a backup into a new data directory; its first start catches the
    /// chain up from the consortium.
    Restore {
        /// The backup's directory.
        from: PathBuf,
        #[command(flatten)]
        node: NodeArgs,
    },
}

#[derive(Debug, Args)]
struct ImportArgs {
    /// Files and directories to load.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// The node's FHIR base URL.
    #[arg(long, default_value = "http://127.0.0.1:8088/fhir")]
    url: String,
    /// An API key whose role may write (a clinician's).
    #[arg(long, env = "FHIRSEAL_API_KEY", hide_env_values = true)]
    api_key: String,
    /// Most resources per transaction (a file's transaction Bundle is sent whole).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Where the import records how far it got (to resume after a kill).
    #[arg(long, default_value = "fhirseal-import.journal.json")]
    journal: PathBuf,
    /// A CA certificate (PEM) for a node whose TLS certificate the system does not trust.
    #[arg(long)]
    ca_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct MigrateArgs {
    /// The FHIR server to migrate, read directly (the node's upstream).
    #[arg(long)]
    from: String,
    /// The node's FHIR base URL, which writes back.
    #[arg(long, default_value = "http://127.0.0.1:8088/fhir")]
    url: String,
    /// An API key of the node whose role may write (a clinician's).
    #[arg(long, env = "FHIRSEAL_API_KEY", hide_env_values = true)]
    api_key: String,
    /// A resource type to migrate (repeat it); none: every type the server names.
    #[arg(long = "type")]
    types: Vec<String>,
    /// Only the resources with this tag (system|code).
    #[arg(long)]
    tag: Option<String>,
    /// Read and report what would be sealed; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Keep the identified versions on the server instead of expunging them.
    #[arg(long)]
    keep_history: bool,
    /// Resources per page read.
    #[arg(long, default_value_t = 100)]
    page: usize,
    /// A CA certificate (PEM) for servers whose TLS certificate the system does not trust.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// The node's split profile (`seal.profile`), when it is not the default: what counts as
    /// identity in the report.
    #[arg(long)]
    profile: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ReportArgs {
    /// The node's FHIR base URL.
    #[arg(long, default_value = "http://127.0.0.1:8088/fhir")]
    url: String,
    /// The node's upstream FHIR server, read directly for what it holds.
    #[arg(long, default_value = "http://127.0.0.1:8080/fhir")]
    upstream: String,
    /// API keys of a clinician (writes, sees identity), a researcher and an auditor.
    #[arg(long, env = "FHIRSEAL_CLINICIAN_KEY", hide_env_values = true)]
    clinician_key: String,
    #[arg(long, env = "FHIRSEAL_RESEARCHER_KEY", hide_env_values = true)]
    researcher_key: String,
    #[arg(long, env = "FHIRSEAL_AUDITOR_KEY", hide_env_values = true)]
    auditor_key: String,
    /// Synthea transaction Bundles, or directories of them.
    #[arg(long, default_value = "../shared/data/synthea")]
    corpus: Vec<PathBuf>,
    /// How many Bundles of the corpus to write.
    #[arg(long, default_value_t = 5)]
    limit: usize,
    /// The node's data directory, scanned for identity strings.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// A shell command that SIGKILLs the node and returns once it is gone, and one that
    /// starts it again (both, for the recovery time).
    #[arg(long, requires = "start_command")]
    kill_command: Option<String>,
    #[arg(long, requires = "kill_command")]
    start_command: Option<String>,
    /// Where report.json and report.html go.
    #[arg(long, default_value = "fhirseal-report")]
    out: PathBuf,
    /// The node's split profile (`seal.profile`), when it is not the default: what counts as
    /// identity.
    #[arg(long)]
    profile: Option<PathBuf>,
}

/// Which node a command works on.
#[derive(Debug, Args)]
struct NodeArgs {
    /// TOML configuration file of the node.
    #[arg(long, short, env = "FHIRSEAL_CONFIG")]
    config: Option<PathBuf>,
    /// The node's data directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl NodeArgs {
    fn load(&self) -> anyhow::Result<Config> {
        RunArgs::of_node(self.config.clone(), self.data_dir.clone(), None).load()
    }
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
        RunArgs::of_node(
            self.config.clone(),
            self.data_dir.clone(),
            self.upstream_url.clone(),
        )
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
    /// The arguments of a command that works on a node's data directory (no listener flags).
    fn of_node(
        config: Option<PathBuf>,
        data_dir: Option<PathBuf>,
        upstream: Option<String>,
    ) -> RunArgs {
        RunArgs {
            config,
            listen: None,
            upstream,
            public_base: None,
            max_body_bytes: None,
            tls_cert: None,
            tls_key: None,
            data_dir,
            log_format: None,
        }
    }

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
        Command::Ledger(args) => {
            let config = args.load()?;
            offline(&config, || ledger(config.clone(), args.command))
        }
        Command::Check(args) => check(args.load()?),
        Command::Backup {
            dir,
            with_keys,
            node,
        } => backup(&node.load()?, &dir, with_keys).map(|()| ExitCode::SUCCESS),
        Command::Import(args) => import(args),
        Command::Migrate(args) => migrate(args),
        Command::Report(args) => report(args),
        Command::Restore { from, node } => {
            restore(&node.load()?, &from).map(|()| ExitCode::SUCCESS)
        }
    }
}

/// Runs `command`, which opens a stopped node's stores, between the clean-stop seal's check
/// and its renewal: sled changes its files when it opens them, and a store found changed is
/// refused (see `fhirseal_sidecar::stores`).
fn offline(
    config: &Config,
    command: impl FnOnce() -> anyhow::Result<ExitCode>,
) -> anyhow::Result<ExitCode> {
    let sealed = stores::take_seal(&config.data_dir)?;
    let result = command();
    if sealed {
        stores::write_seal(&config.data_dir)?;
    }
    result
}

/// `fhirseal check`: the report is the command's output.
#[allow(clippy::print_stdout)]
fn check(config: Config) -> anyhow::Result<ExitCode> {
    let seal = stores::check_seal(&config.data_dir)?;
    let run = || -> anyhow::Result<fhirseal_sidecar::check::Report> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let mut bar: Option<(Stage, ProgressBar)> = None;
        let mut show = |stage: Stage, done: u64, total: u64| {
            if bar.as_ref().is_none_or(|(s, _)| *s != stage) {
                if let Some((_, old)) = bar.take() {
                    old.finish_and_clear();
                }
                let unit = match stage {
                    Stage::Vault => "records",
                    Stage::Chain => "blocks",
                };
                bar = Some((stage, progress(total, unit)));
            }
            if let Some((_, b)) = &bar {
                b.set_position(done);
            }
        };
        let report = runtime.block_on(fhirseal_sidecar::check::check(&config, &mut show))?;
        if let Some((_, b)) = bar {
            b.finish_and_clear();
        }
        Ok(report)
    };
    let report = if seal.differences.is_empty() {
        let sealed = stores::take_seal(&config.data_dir)?;
        let report = run();
        if sealed {
            stores::write_seal(&config.data_dir)?;
        }
        report?
    } else {
        // Changed stores are reported without being opened.
        run()?
    };
    for verdict in &report.verdicts {
        if verdict.problems.is_empty() {
            println!("{}: sound: {}", verdict.store, verdict.summary);
        } else {
            println!("{}: DAMAGED", verdict.store);
            for problem in &verdict.problems {
                println!("  {problem}");
            }
        }
    }
    Ok(if report.is_sound() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `fhirseal backup DIR`: what it made is the command's output; keys are spoken of loudly.
#[allow(clippy::print_stdout)]
fn backup(config: &Config, dir: &std::path::Path, with_keys: bool) -> anyhow::Result<()> {
    let spinner = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {bytes} copied") {
        spinner.set_style(style);
    }
    let report = fhirseal_sidecar::backup::backup(config, dir, with_keys, &mut |bytes| {
        spinner.set_position(bytes)
    })?;
    spinner.finish_and_clear();
    let m = &report.manifest;
    println!(
        "backup of member {} of consortium {} in {} ({}):",
        m.member,
        m.consortium,
        report.dir.display(),
        if m.online {
            "copied from the running node, one consistent cut"
        } else {
            "the node was stopped"
        }
    );
    for store in &m.stores {
        println!(
            "  {:<10} {} entries in {} trees, {} (SHA-256 {})",
            store.name, store.entries, store.trees, store.file, store.sha256
        );
    }
    match &report.keys {
        Some(keys) => {
            println!();
            println!("WARNING: {} HOLDS THE NODE'S PRIVATE KEYS.", keys.display());
            println!(
                "  With them, anyone who has this backup can decrypt every identity in the vault."
            );
            println!("  Keep it as secret as the vault itself: encrypted, apart, access logged.");
        }
        None => {
            println!();
            println!(
                "KEYS ARE NOT IN THIS BACKUP. The vault is sealed for RSA key {}…;",
                &m.rsa_key_id[..16.min(m.rsa_key_id.len())]
            );
            println!(
                "  without the keystore {} it cannot be read. Keep a copy of it apart (or back up",
                report.keys_left.display()
            );
            println!("  again with --with-keys).");
        }
    }
    Ok(())
}

/// `fhirseal restore DIR`: what it did is the command's output.
#[allow(clippy::print_stdout)]
fn restore(config: &Config, from: &std::path::Path) -> anyhow::Result<()> {
    let report = fhirseal_sidecar::backup::restore(config, from, &mut |store| {
        eprintln!("loading the {store} store");
    })?;
    let m = &report.manifest;
    println!(
        "restored member {} of consortium {} into {}",
        m.member,
        m.consortium,
        config.data_dir.display()
    );
    for store in &m.stores {
        println!("  {:<10} {} entries", store.name, store.entries);
    }
    println!(
        "  keys       {}",
        if report.keys_from_backup {
            format!(
                "copied from the backup into {}",
                config.keys_dir().display()
            )
        } else {
            format!("the node's, already in {}", config.keys_dir().display())
        }
    );
    println!(
        "Start it with `fhirseal run`: it catches its chain up from the consortium's other \
         members (in a consortium of one, the backup's chain is the chain)."
    );
    Ok(())
}

/// `fhirseal ledger …`: what it prints is the command's output.
#[allow(clippy::print_stdout)]
fn ledger(config: Config, command: LedgerCommand) -> anyhow::Result<ExitCode> {
    let runtime = runtime()?;
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

/// `fhirseal import`: a progress bar while it runs, then the report.
#[allow(clippy::print_stdout)] // the report is the command's output
fn import(args: ImportArgs) -> anyhow::Result<ExitCode> {
    use fhirseal_sidecar::import::{files, ImportOptions, Importer};
    let files = files(&args.paths)?;
    let importer = Importer::new(ImportOptions {
        url: args.url.trim_end_matches('/').to_owned(),
        api_key: args.api_key,
        batch: args.batch,
        journal: args.journal,
        ca_file: args.ca_file,
    })?;
    let runtime = runtime()?;
    let bar = progress(0, "resources");
    let report = runtime.block_on(importer.run(&files, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    }));
    bar.finish_and_clear();
    let report = report?;
    println!(
        "imported {} resources in {} transactions from {} files; {} transactions were already imported",
        report.resources, report.batches, report.files, report.already
    );
    for (file, batch, status, why) in &report.refused {
        println!(
            "refused: {} (batch {batch}): {status} {why}",
            file.display()
        );
    }
    Ok(if report.refused.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `fhirseal migrate`: a spinner while it runs, then the report.
#[allow(clippy::print_stdout)] // the report is the command's output
fn migrate(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    use fhirseal_sidecar::migrate::{MigrateOptions, Migrator};
    let dry_run = args.dry_run;
    let migrator = Migrator::new(
        MigrateOptions {
            from: args.from.trim_end_matches('/').to_owned(),
            url: args.url.trim_end_matches('/').to_owned(),
            api_key: args.api_key,
            types: args.types,
            tag: args.tag,
            dry_run,
            keep_history: args.keep_history,
            page: args.page,
            ca_file: args.ca_file,
        },
        split_profile(args.profile.as_deref())?,
    )?;
    let runtime = runtime()?;
    let report = with_spinner(|say| {
        runtime.block_on(migrator.run(&mut |kind, done| say(format!("{kind}: {done}"))))
    })?;
    let verb = if dry_run { "would seal" } else { "sealed" };
    println!(
        "{:<24} {:>8} {:>10} {:>14} {:>8} {:>9} {:>13}",
        "type", "seen", verb, "no identity", "skipped", "expunged", "history kept"
    );
    for (kind, t) in &report.types {
        println!(
            "{kind:<24} {:>8} {:>10} {:>14} {:>8} {:>9} {:>13}",
            t.seen,
            t.sealed,
            t.without_identity,
            t.skipped.len(),
            t.expunged,
            t.history_kept
        );
        for (id, why) in &t.skipped {
            println!("  skipped {kind}/{id}: {why}");
        }
    }
    if let Some(why) = &report.expunge_refused {
        println!("the server did not expunge the identified versions ({why}): they remain in its history");
    }
    if dry_run {
        println!("dry run: nothing was written");
        return Ok(ExitCode::SUCCESS);
    }
    if report.identity_left.is_empty() {
        println!("identity left upstream: none (every version of every sealed resource read back)");
    } else {
        println!(
            "identity left upstream: {} resources still hold identity strings in their history",
            report.identity_left.len()
        );
        for (resource, strings) in &report.identity_left {
            println!("  {resource}: {strings} identity strings");
        }
    }
    let skipped = report.types.values().any(|t| !t.skipped.is_empty());
    Ok(if skipped || !report.identity_left.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `fhirseal report`: the table, and the files.
#[allow(clippy::print_stdout)] // the table is the command's output
fn report(args: ReportArgs) -> anyhow::Result<ExitCode> {
    use fhirseal_sidecar::report::{ReportOptions, Reporter};
    let mut corpus = fhirseal_sidecar::import::files(&args.corpus)?;
    corpus.retain(|p| p.extension().is_some_and(|e| e == "json"));
    corpus.truncate(args.limit);
    anyhow::ensure!(
        !corpus.is_empty(),
        "no Synthea Bundle (.json) under {:?}",
        args.corpus
    );
    let reporter = Reporter::new(
        ReportOptions {
            url: args.url.trim_end_matches('/').to_owned(),
            upstream: args.upstream.trim_end_matches('/').to_owned(),
            clinician_key: args.clinician_key,
            researcher_key: args.researcher_key,
            auditor_key: args.auditor_key,
            corpus,
            data_dir: args.data_dir,
            kill_command: args.kill_command,
            start_command: args.start_command,
        },
        split_profile(args.profile.as_deref())?,
    )?;
    let runtime = runtime()?;
    let metrics =
        with_spinner(|say| runtime.block_on(reporter.run(&mut |step| say(step.to_owned()))))?;
    std::fs::create_dir_all(&args.out).with_context(|| args.out.display().to_string())?;
    std::fs::write(
        args.out.join("report.json"),
        serde_json::to_vec_pretty(&metrics.to_json())?,
    )?;
    std::fs::write(args.out.join("report.html"), metrics.html())?;
    print!("{}", metrics.table());
    println!(
        "written: {} and {}",
        args.out.join("report.json").display(),
        args.out.join("report.html").display()
    );
    let sound = metrics.leaked_anywhere == 0
        && metrics.reads_as_allowed == metrics.reads
        && metrics.reads_with_event == metrics.reads;
    Ok(if sound {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The split profile in `path`, or the default.
fn split_profile(
    path: Option<&std::path::Path>,
) -> anyhow::Result<fhirseal_adapters::profile::Profile> {
    Ok(match path {
        Some(path) => fhirseal_adapters::profile::Profile::from_file(path)?,
        None => fhirseal_adapters::profile::Profile::default(),
    })
}

/// Runs `work` with a spinner on standard error showing each message it is told.
fn with_spinner<T>(work: impl FnOnce(&dyn Fn(String)) -> T) -> T {
    let spinner = ProgressBar::new_spinner();
    let out = work(&|message| {
        spinner.set_message(message);
        spinner.tick();
    });
    spinner.finish_and_clear();
    out
}

/// The async runtime a command runs its work on.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
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
    let runtime = runtime()?;
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
    let runtime = runtime()?;
    let served: anyhow::Result<()> = runtime.block_on(async {
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
        Ok(())
    });
    served?;
    // Every task, and with them every handle on the stores, ends with the runtime: only then
    // are sled's files as it leaves them, to be sealed.
    runtime.shutdown_timeout(std::time::Duration::from_secs(30));
    stores::write_seal(&config.data_dir)?;
    tracing::info!("fhirseal stopped; the stores are sealed");
    Ok(())
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
