//! `demo`: the whole pipeline on a bundled example, with recorded model replies, in a
//! scratch git repository, so a new user sees the tool work before installing a model.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::model::recorded::Replayer;
use crate::model::{Backend, ChatReply, Client, Finish};
use crate::route::Route;

const SPEC: &str = include_str!("../fixtures/demo/spec.json");
const REPO_FILES: &[(&str, &str)] = &[
    ("README.md", include_str!("../fixtures/demo/repo/README.md")),
    (
        "test_slugify.sh",
        include_str!("../fixtures/demo/repo/test_slugify.sh"),
    ),
];
/// The first reply leaves a bug for the test to catch; the second is the repair.
const REPLIES: &[&str] = &[
    include_str!("../fixtures/demo/reply-1.md"),
    include_str!("../fixtures/demo/reply-2.md"),
];

/// Where the demo put things.
pub struct DemoSetup {
    pub spec_path: PathBuf,
    pub repo_dir: PathBuf,
}

/// Creates the example repository (one commit) and its spec under `dir`.
pub fn prepare(dir: &Path) -> Result<DemoSetup> {
    let repo_dir = dir.join("repo");
    std::fs::create_dir_all(&repo_dir)
        .map_err(|error| Error::io("create directory", &repo_dir, error))?;
    let git = git2::Repository::init(&repo_dir).map_err(|error| Error::Repo {
        path: repo_dir.clone(),
        message: format!("cannot create the demo repository: {}", error.message()),
    })?;
    for (name, text) in REPO_FILES {
        let path = repo_dir.join(name);
        std::fs::write(&path, text).map_err(|error| Error::io("write", &path, error))?;
    }
    commit_all(&git).map_err(|error| Error::Repo {
        path: repo_dir.clone(),
        message: format!("cannot commit the demo files: {}", error.message()),
    })?;
    let spec_path = dir.join("demo-spec.json");
    std::fs::write(&spec_path, SPEC).map_err(|error| Error::io("write", &spec_path, error))?;
    Ok(DemoSetup {
        spec_path,
        repo_dir,
    })
}

fn commit_all(git: &git2::Repository) -> std::result::Result<(), git2::Error> {
    let mut index = git.index()?;
    index.add_all(["*"], git2::IndexAddOption::DEFAULT, None)?;
    index.write()?;
    let tree = git.find_tree(index.write_tree()?)?;
    // A fixed identity: the demo must not depend on the user's git configuration.
    let signature =
        git2::Signature::now("execute-local-task demo", "demo@execute-local-task.invalid")?;
    git.commit(
        Some("HEAD"),
        &signature,
        &signature,
        "Demo project",
        &tree,
        &[],
    )?;
    Ok(())
}

/// The recorded replies, served in order instead of a server. Sequential, not matched
/// against the requests, so the demo survives changes to the prompt templates' wording.
pub fn recorded_route() -> Route {
    let replies = REPLIES
        .iter()
        .map(|text| ChatReply {
            content: (*text).to_owned(),
            finish: Finish::Stop,
            usage: None,
            notes: Vec::new(),
        })
        .collect();
    Route {
        client: Client::new(Backend::Recorded(Replayer::sequential(
            "recorded demo replies (no model server used)",
            replies,
        ))),
        model: "recorded-demo".to_owned(),
    }
}
