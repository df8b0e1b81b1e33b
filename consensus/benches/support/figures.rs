//! Where a benchmark's figures go: `target/bench/<name>.json`. Shared by the benches that write
//! figures (each includes it with `#[path = "support/figures.rs"] mod figures;`).

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
