//! execute-local-task: hands one small coding task to a model on the user's own machine
//! and writes the result into a git repository, safely.
//!
//! The modules below follow the data flow of a run.

pub mod cli;
pub mod content;
pub mod context;
pub mod demo;
pub mod diff;
pub mod error;
pub mod extract;
pub mod guard;
pub mod language;
pub mod lock;
pub mod model;
pub mod pipeline;
pub mod prompt;
pub mod repo;
pub mod result;
pub mod rollback;
pub mod route;
pub mod spec;
pub mod test_run;
pub mod write;

pub use cli::run;
