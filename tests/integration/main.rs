//! The one integration-test binary: every test runs the real `execute-local-task` binary
//! against a temporary git repository and a scripted model server (or, in the
//! conformance tier, a real llama.cpp-based server).

mod harness;

mod batch;
mod batch_gate;
mod batch_merge;
mod batch_speed;
mod branch_config;
mod branches;
mod config;
mod conformance;
mod core;
mod extraction;
mod hardening_input;
mod hardening_server;
mod hardening_tree;
mod integrations;
mod ledger;
mod ledger_columns;
mod ledger_config;
mod mcp;
mod mcp_cli_args;
mod pools;
mod providers;
mod repair;
mod review_fixes;
mod review_guard;
mod review_routing;
mod routing;
mod runs;
mod safety;
mod schemas;
mod signals;
mod skill_commands;
mod snapshots;
mod validator;
