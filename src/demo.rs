//! `demo`: the whole pipeline on a bundled example, with recorded model replies, in a
//! scratch git repository, so a new user sees the tool work before installing a model.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::model::recorded::Replayer;
use crate::model::{Backend, ChatReply, Client, Finish};
use crate::server::Connected;

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
///
/// `dir` may be one the user gave (`--dir`): the demo never re-initialises, overwrites or
/// commits anything of theirs, so `dir/repo` and `dir/demo-spec.json` must not exist yet.
pub fn prepare(dir: &Path) -> Result<DemoSetup> {
    let repo_dir = dir.join("repo");
    let spec_path = dir.join("demo-spec.json");
    let taken = |path: &Path| {
        Error::Usage(format!(
            "demo: {} already exists; the demo only creates `repo/` and `demo-spec.json` and never overwrites anything, so give --dir a directory without them (or an empty or new one)",
            path.display()
        ))
    };
    // `symlink_metadata`: a dangling symlink there is something too.
    if std::fs::symlink_metadata(&spec_path).is_ok() {
        return Err(taken(&spec_path));
    }
    std::fs::create_dir_all(dir).map_err(|error| Error::io("create directory", dir, error))?;
    // `create_dir`, not `create_dir_all`: it fails when `repo` exists, with no window
    // between a check and the creation.
    std::fs::create_dir(&repo_dir).map_err(|error| {
        if error.kind() == std::io::ErrorKind::AlreadyExists {
            taken(&repo_dir)
        } else {
            Error::io("create directory", &repo_dir, error)
        }
    })?;
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
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&spec_path)
        .and_then(|mut file| std::io::Write::write_all(&mut file, SPEC.as_bytes()))
        .map_err(|error| {
            if error.kind() == std::io::ErrorKind::AlreadyExists {
                taken(&spec_path)
            } else {
                Error::io("write", &spec_path, error)
            }
        })?;
    Ok(DemoSetup {
        spec_path,
        repo_dir,
    })
}

fn commit_all(git: &git2::Repository) -> std::result::Result<(), git2::Error> {
    let mut index = git.index()?;
    // Only the demo's own files: nothing else is ever staged or committed.
    for (name, _) in REPO_FILES {
        index.add_path(Path::new(name))?;
    }
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
pub fn recorded_server() -> Connected {
    let replies = REPLIES
        .iter()
        .map(|text| ChatReply {
            content: (*text).to_owned(),
            finish: Finish::Stop,
            usage: None,
            notes: Vec::new(),
            served_by: None,
        })
        .collect();
    Connected {
        client: Client::new(Backend::Recorded(Replayer::sequential(
            "recorded demo replies (no model server used)",
            replies,
        ))),
        model: "recorded-demo".to_owned(),
        notes: Vec::new(),
    }
}

/// The demo's batch: two specs, the second depending on the first, each with its one
/// recorded reply.
const BATCH: &[(&str, &str, &str)] = &[
    (
        "greet.json",
        include_str!("../fixtures/demo/batch/greet.json"),
        include_str!("../fixtures/demo/batch/reply-greet.md"),
    ),
    (
        "shout.json",
        include_str!("../fixtures/demo/batch/shout.json"),
        include_str!("../fixtures/demo/batch/reply-shout.md"),
    ),
];

/// Writes the batch's specs into `dir/demo-batch/` (which must not exist yet) and gives
/// that directory.
pub fn prepare_batch(dir: &Path) -> Result<PathBuf> {
    let specs = dir.join("demo-batch");
    std::fs::create_dir(&specs).map_err(|error| {
        if error.kind() == std::io::ErrorKind::AlreadyExists {
            Error::Usage(format!(
                "demo: {} already exists; the demo never overwrites anything",
                specs.display()
            ))
        } else {
            Error::io("create directory", &specs, error)
        }
    })?;
    for (name, text, _) in BATCH {
        let path = specs.join(name);
        std::fs::write(&path, text).map_err(|error| Error::io("write", &path, error))?;
    }
    Ok(specs)
}

/// The recorded server of the batch task `spec` names: its own reply, served in order.
pub fn batch_server(spec: &crate::pipeline::SpecInput) -> Option<Connected> {
    let task_id = spec.peek_task_id()?;
    let (_, _, reply) = BATCH
        .iter()
        .find(|(_, text, _)| text.contains(&format!("\"task_id\": \"{task_id}\"")))?;
    let reply = ChatReply {
        content: (*reply).to_owned(),
        finish: Finish::Stop,
        usage: None,
        notes: Vec::new(),
        served_by: None,
    };
    Some(Connected {
        client: Client::new(Backend::Recorded(Replayer::sequential(
            "recorded demo replies (no model server used)",
            vec![reply],
        ))),
        model: "recorded-demo".to_owned(),
        notes: Vec::new(),
    })
}
