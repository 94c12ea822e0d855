//! execute-local-task: hands one small coding task to a model on the user's own machine
//! and writes the result into a git repository, safely.
//!
//! The modules below follow the data flow of a run.

pub mod arguments;
pub mod batch;
mod blocking;
pub mod branch;
pub mod bring_in;
pub mod cancel;
pub mod cli;
pub mod content;
pub mod context;
pub mod defaults;
pub mod demo;
pub mod diff;
pub mod discovery;
pub mod document;
pub mod endpoint;
pub mod error;
pub mod escape;
pub mod export;
pub mod extract;
mod git_cli;
pub mod guard;
pub mod harden;
pub mod input_file;
pub mod language;
pub mod ledger;
pub mod lock;
pub mod log;
pub mod mcp;
mod mcp_tools;
pub mod model;
pub mod options;
pub mod pipeline;
pub mod plan;
pub mod prepare;
pub mod progress;
pub mod prompt;
pub mod prune;
mod record;
mod repair;
mod reply;
pub mod repo;
pub mod result;
pub mod review;
pub mod rollback;
mod run_registry;
pub mod runs;
pub mod savings;
pub mod server;
pub mod spec;
pub mod stats;
pub mod stats_page;
mod summary;
mod targets;
mod test_changes;
pub mod test_run;
mod transaction;
pub mod trust;
pub mod worktree;
pub mod write;

pub use cli::run;
