//! The one integration-test binary: every test runs the real `execute-local-task` binary
//! against a temporary git repository and a scripted model server.

mod harness;

mod core;
mod extraction;
mod snapshots;
