//! Where a benchmark's figures go: `target/bench/<name>.json`. Shared by the benches that write
//! figures: this crate's include it with `#[path = "support/figures.rs"] mod figures;`, the
//! sidecar's with a path to this file (benches of two crates, one writer of the format).

use serde_json::Value;

/// Writes `figures` to `target/bench/<name>.json` (under `CARGO_TARGET_DIR` when it is set).
#[allow(clippy::print_stdout)] // a benchmark reports to its terminal
pub(crate) fn write(name: &str, figures: Value) {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("bench");
    let written = std::fs::create_dir_all(&dir).and_then(|()| {
        std::fs::write(
            dir.join(format!("{name}.json")),
            serde_json::to_vec_pretty(&figures).unwrap_or_default(),
        )
    });
    match written {
        Ok(()) => println!("figures in {}", dir.join(format!("{name}.json")).display()),
        Err(error) => println!("figures not written to {}: {error}", dir.display()),
    }
}

/// One measure as the figures files hold it: its value and unit, and, when it was measured
/// against a baseline in the same run, the baseline and the ratio value ÷ baseline.
#[allow(dead_code)] // not every bench that includes this file compares with a baseline
pub(crate) fn measure(value: f64, unit: &str, baseline: Option<f64>) -> Value {
    let finite = |x: f64| {
        if x.is_finite() {
            Value::from(x)
        } else {
            Value::Null
        }
    };
    serde_json::json!({
        "value": finite(value),
        "unit": unit,
        "baseline": baseline.map_or(Value::Null, finite),
        "ratio": baseline.map_or(Value::Null, |b| finite(value / b)),
    })
}

/// The median and 99th percentile of a sample, and its size.
#[allow(dead_code)] // not every bench that includes this file takes percentiles
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Percentiles {
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) n: usize,
}

/// The percentiles of `values` (nearest rank; all zero for an empty sample).
#[allow(dead_code)]
pub(crate) fn percentiles(mut values: Vec<f64>) -> Percentiles {
    if values.is_empty() {
        return Percentiles::default();
    }
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    Percentiles {
        p50: at(0.50),
        p99: at(0.99),
        n: values.len(),
    }
}
