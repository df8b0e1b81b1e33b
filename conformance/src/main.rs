//! The `fhirseal-conformance` command: parses the command line, loads the cases, runs one mode
//! and writes the table (stdout) and JUnit XML; exits 1 when a case fails, 2 when it cannot run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use fhirseal_conformance::{run, Client, Endpoint, Mode, RunMode, Suite};

#[derive(Debug, Parser)]
#[command(
    name = "fhirseal-conformance",
    version,
    about = "Checks a FHIR R4 endpoint: conformance, transparency against a reference, privacy",
    long_about = "Checks a FHIR R4 endpoint over HTTP.\n\n\
        --endpoint URL alone: does it behave as FHIR R4 says?\n\
        with --reference URL: does it answer every case as the reference does (status, key \
        headers, bodies with ids, meta, timestamps and bases normalized)?\n\
        with --privacy: posts identity with --writer-header credentials and reads it back with \
        --header credentials, which must never see it."
)]
struct Cli {
    /// The FHIR base under test, e.g. http://127.0.0.1:8088/fhir.
    #[arg(long, env = "FHIRSEAL_CONFORMANCE_ENDPOINT")]
    endpoint: String,
    /// Differential mode: the base to compare with (e.g. the FHIR server behind the sidecar).
    #[arg(long, conflicts_with = "privacy")]
    reference: Option<String>,
    /// Privacy mode: run the privacy cases; --header is a reader who may not see identity.
    #[arg(long)]
    privacy: bool,
    /// A header sent with every request, `Name: value` (repeat for more), e.g. credentials.
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// Headers for the steps that write as a principal who may see identity (privacy mode).
    #[arg(long = "writer-header", value_name = "NAME: VALUE")]
    writer_headers: Vec<String>,
    /// Headers for the reference in differential mode (default: the same as --header).
    #[arg(long = "reference-header", value_name = "NAME: VALUE")]
    reference_headers: Vec<String>,
    /// A folder of your own case files (*.toml) to add to the built-in ones (repeatable).
    #[arg(long = "cases", value_name = "DIR")]
    cases: Vec<PathBuf>,
    /// Leave the built-in cases out (run only those of --cases).
    #[arg(long)]
    no_builtin: bool,
    /// Run only the cases whose name contains this, or whose area is this (repeatable).
    #[arg(long = "only", value_name = "TEXT")]
    only: Vec<String>,
    /// Leave out the case with exactly this name (repeatable); skipped cases are listed.
    #[arg(long = "skip", value_name = "CASE")]
    skip: Vec<String>,
    /// Write JUnit XML here.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// How many cases run at once.
    #[arg(long, default_value_t = 4)]
    jobs: usize,
    /// Seconds to wait for one answer.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// List the selected cases and exit.
    #[arg(long)]
    list: bool,
}

fn headers(raw: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    raw.iter()
        .map(|h| {
            let Some((name, value)) = h.split_once(':') else {
                bail!("--header {h:?}: expected `Name: value`");
            };
            Ok((name.trim().to_owned(), value.trim().to_owned()))
        })
        .collect()
}

fn main() -> ExitCode {
    match run_cli(Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("fhirseal-conformance: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[allow(clippy::print_stdout)] // the table is the command's output
fn run_cli(cli: Cli) -> anyhow::Result<bool> {
    let mut suite = if cli.no_builtin {
        Suite::default()
    } else {
        Suite::builtin()?
    };
    for dir in &cli.cases {
        suite.load_dir(dir)?;
    }
    let case_mode = if cli.privacy {
        Mode::Privacy
    } else {
        Mode::Conformance
    };
    let cases = suite.select(case_mode, &cli.only, &cli.skip);
    for name in &cli.skip {
        eprintln!("skipped: {name}");
    }
    if cases.is_empty() {
        bail!("no case selected");
    }
    if cli.list {
        for case in &cases {
            println!("{:<40} {:<14} {}", case.name, case.area, case.about);
        }
        return Ok(true);
    }

    let mut endpoint = Endpoint::new(&cli.endpoint);
    endpoint.headers = headers(&cli.headers)?;
    if !cli.writer_headers.is_empty() {
        endpoint.writer_headers = Some(headers(&cli.writer_headers)?);
    }
    let mode = match &cli.reference {
        Some(reference) => {
            let mut reference = Endpoint::new(reference);
            reference.headers = if cli.reference_headers.is_empty() {
                endpoint.headers.clone()
            } else {
                headers(&cli.reference_headers)?
            };
            reference.writer_headers = endpoint.writer_headers.clone();
            RunMode::Differential { reference }
        }
        None if cli.privacy => RunMode::Privacy,
        None => RunMode::Conformance,
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let report = runtime.block_on(async {
        let client = Client::new(Duration::from_secs(cli.timeout))?;
        anyhow::Ok(run(&client, cases, &endpoint, &mode, cli.jobs).await)
    })?;
    print!("{}", report.table());
    if let Some(path) = &cli.junit {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(path, report.junit())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report.passed())
}
