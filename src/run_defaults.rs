//! The configuration's defaults for how a run is made (`[run]`): whether it goes on a
//! task branch when the command line says neither `--branch` nor `--no-branch`, and the
//! directories a task worktree links besides `--link`'s. The command line, the MCP tools
//! and a batch all settle their [`RunOptions`] here before choosing how to run, so one
//! configuration means one behaviour everywhere.
//!
//! A configuration that cannot be read is left to the run itself, which reports it
//! (naming the file, line and key) before it writes anything; here it only means no
//! default applies.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::blocking::off_thread;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::options::RunOptions;
use crate::pipeline::Env;
use crate::repo::Repo;

/// `options` with the configuration's `[run]` defaults applied: `branch` is `--branch`,
/// else not when `--no-branch`, else `[run] branch`; a branch run's `links` are `[run]
/// link`'s then `--link`'s. `--link` for a run that stays in place is bad input.
pub async fn settle(options: RunOptions, env: &Env) -> Result<RunOptions> {
    let env = Arc::clone(env);
    off_thread(move || apply(options, &*env)).await
}

fn apply(mut options: RunOptions, env: &dyn Fn(&str) -> Option<String>) -> Result<RunOptions> {
    let config = configured(options.repo_dir.as_deref(), env);
    if options.no_branch {
        options.branch = false;
    } else if !options.branch {
        options.branch = config.as_ref().is_some_and(|c| c.run.branch.value);
    }
    if !options.branch {
        if options.links.is_empty() {
            return Ok(options);
        }
        return Err(Error::Usage(
            "--link is for a run on a task branch: give --branch too, or set `branch = true` under [run] in the config".to_owned(),
        ));
    }
    if let Some(config) = config {
        let mut links: Vec<PathBuf> = config.run.link.value.clone();
        for link in options.links.drain(..) {
            if !links.contains(&link) {
                links.push(link);
            }
        }
        options.links = links;
    }
    Ok(options)
}

/// The configuration of the repository at `dir` (the working directory's when `None`),
/// when there is one to read.
fn configured(dir: Option<&Path>, env: &dyn Fn(&str) -> Option<String>) -> Option<Config> {
    let repo = Repo::discover(dir.unwrap_or(Path::new("."))).ok()?;
    Config::load(Some(repo.root()), None, env).ok()
}
