//! Decides at build time whether the integration tests' conformance tier, and the MCP
//! server's test with the official Python SDK, run.
//!
//! Rust's test harness cannot mark a test ignored while it runs, so a tier that needs a
//! llama.cpp server nobody installed used to return early and count as passed. This
//! script sets `cfg(conformance_tier)` when the server is installed (or when `CI` is
//! set, where a missing server must fail the tier); without it the tier's tests are
//! `#[ignore]`d, and `cargo test` lists them as ignored with the reason.

use std::path::PathBuf;

/// Names the server's Python when it is not in the default venv.
const PYTHON_ENV: &str = "LOCAL_TASK_CONFORMANCE_PYTHON";

/// Names a Python with the official MCP SDK (`pip install mcp`) when it is not in the
/// default venv `.venv-mcp/`; with one (or under CI) `cfg(mcp_sdk_tier)` is set and the
/// MCP server's test with that client runs.
const MCP_PYTHON_ENV: &str = "LOCAL_TASK_MCP_PYTHON";

fn main() {
    println!("cargo::rustc-check-cfg=cfg(conformance_tier)");
    println!("cargo::rustc-check-cfg=cfg(integration_clients)");
    println!("cargo::rerun-if-env-changed={PYTHON_ENV}");
    println!("cargo::rerun-if-env-changed=CI");
    let python = server_python();
    if python.exists() {
        // Removing the venv ignores the tier again at the next build.
        println!("cargo::rerun-if-changed={}", python.display());
    } else {
        // Watching a file that does not exist would rerun this script, and so rebuild the
        // whole crate, on every build; `conformance/install.sh` touches this file instead.
        println!("cargo::rerun-if-changed=build.rs");
    }
    if python.exists() || under_ci() {
        println!("cargo::rustc-cfg=conformance_tier");
    }
    integration_clients();
    mcp_sdk();
}

/// The same for the integration tests with the real clients (the Claude Code CLI and the
/// pre-commit framework), which `.ci/run` installs into `.integration-clients/`.
fn integration_clients() {
    let marker = PathBuf::from(".integration-clients/installed");
    if marker.exists() {
        println!("cargo::rerun-if-changed={}", marker.display());
    }
    if marker.exists() || under_ci() {
        println!("cargo::rustc-cfg=integration_clients");
    }
}

/// The same for the MCP server's test with the official MCP Python SDK, which `.ci/run`
/// installs into `.venv-mcp/`.
fn mcp_sdk() {
    println!("cargo::rustc-check-cfg=cfg(mcp_sdk_tier)");
    println!("cargo::rerun-if-env-changed={MCP_PYTHON_ENV}");
    let mcp_python = match std::env::var_os(MCP_PYTHON_ENV) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(".venv-mcp/bin/python"),
    };
    if mcp_python.exists() {
        println!("cargo::rerun-if-changed={}", mcp_python.display());
    }
    if mcp_python.exists() || under_ci() {
        println!("cargo::rustc-cfg=mcp_sdk_tier");
    }
}

/// Where the tests look for the server's Python (see `tests/integration/conformance.rs`).
fn server_python() -> PathBuf {
    match std::env::var_os(PYTHON_ENV) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(".venv-conformance/bin/python"),
    }
}

/// The same test of `CI` as the tier's own (`under_ci` in `conformance.rs`).
fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| !matches!(value.trim(), "" | "0" | "false"))
}
