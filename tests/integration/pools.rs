//! Endpoint pools and the model's context window: calls spread over a pool's members by
//! calls in flight, a dead member set aside and the call served by another, every member
//! failing as the usual model error, `config --check` probing each member; Ollama's
//! `num_ctx` capped at what `/api/show` reports, and a prompt that cannot fit the
//! window refused before any chat request.

use std::path::Path;

use execute_local_task::batch::BatchSummary;
use execute_local_task::check::ProfileProbe;
use execute_local_task::discovery::ServerReport;
use execute_local_task::result::{Status, TaskResult};
use serde_json::json;

use crate::harness::{MODEL, ModelServer, Protocol, Script, Test, closed_port_url, spec};

const USER_CONFIG: &str = ".config/execute-local-task/config.toml";

/// A reply for `path` that arrives only once `release` exists; `arrived` marks its request.
fn held(arrived: &Path, release: &Path, path: &str, code: &str) -> Script {
    let Script::Chat(chat) = Script::code(path, code) else {
        unreachable!("Script::code is a chat")
    };
    Script::Held {
        arrived: arrived.to_path_buf(),
        release: release.to_path_buf(),
        chat,
    }
}

/// An OpenAI-compatible server's API root, as a pool member is shown.
fn api_root(server: &ModelServer) -> String {
    format!("{}/v1", server.url)
}

fn batch_results(stdout: &str) -> (Vec<TaskResult>, BatchSummary) {
    let mut lines: Vec<&str> = stdout.lines().collect();
    let summary = serde_json::from_str(lines.pop().expect("a summary line")).unwrap();
    let results = lines
        .iter()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    (results, summary)
}

#[test]
fn two_tasks_at_once_go_to_different_pool_members() {
    // Each member holds its reply until the other member has a request too: two calls in
    // flight at once, and each member's log shows one of them. Were both sent to one
    // member, neither would be released before the first-byte timeout.
    let markers = tempfile::tempdir().unwrap();
    let (a_arrived, b_arrived) = (markers.path().join("a"), markers.path().join("b"));
    let a = ModelServer::start(Vec::new(), vec![MODEL.to_owned()]);
    let b = ModelServer::start(Vec::new(), vec![MODEL.to_owned()]);
    for (server, arrived, other) in [(&a, &a_arrived, &b_arrived), (&b, &b_arrived, &a_arrived)] {
        for id in ["P1", "P2"] {
            let path = format!("out/{id}.txt");
            server.route(
                &format!("<<{id}>>"),
                vec![held(arrived, other, &path, &format!("{id}\n"))],
            );
        }
    }
    let run = Test::new()
        .endpoint(&format!("{},{}", a.url, b.url))
        .run_with(|spec_path| {
            let dir = spec_path.parent().unwrap().join("specs");
            std::fs::create_dir_all(&dir).unwrap();
            for id in ["P1", "P2"] {
                let spec = json!({
                    "task_id": id,
                    "description": format!("Task <<{id}>>: write the file."),
                    "output_file": format!("out/{id}.txt"),
                });
                std::fs::write(dir.join(format!("{id}.json")), spec.to_string()).unwrap();
            }
            ["--jobs", "2", "--first-byte-timeout", "30"]
                .into_iter()
                .map(str::to_owned)
                .chain([dir.display().to_string()])
                .collect()
        });
    run.assert_code(0);
    let (results, summary) = batch_results(&run.stdout);
    assert_eq!(summary.jobs, 2);
    let (a_log, b_log) = (a.requests(), b.requests());
    assert_eq!((a_log.len(), b_log.len()), (1, 1), "{}", run.stderr);
    assert_ne!(a_log[0].last_user_message(), b_log[0].last_user_message());
    let mut answered: Vec<String> = results
        .iter()
        .map(|result| {
            assert_eq!(result.status, Status::Success, "{}", result.summary);
            let member = result.model.as_ref().unwrap().endpoint.clone();
            let note = format!("answered by pool member {member} (of 2)");
            assert!(
                result.attempts[0].notes.contains(&note),
                "{:?}",
                result.attempts
            );
            member
        })
        .collect();
    answered.sort();
    let mut members = vec![api_root(&a), api_root(&b)];
    members.sort();
    assert_eq!(answered, members);
}

#[test]
fn a_dead_member_is_set_aside_and_another_serves_the_call() {
    let dead = closed_port_url();
    let live = ModelServer::start(
        vec![Script::code("out.txt", "served\n")],
        vec![MODEL.to_owned()],
    );
    let run = Test::new()
        .spec(spec("out.txt", &json!({})))
        .endpoint(&format!("{dead},{}", live.url))
        .run();
    run.assert_code(0);
    assert_eq!(run.read("out.txt").as_deref(), Some("served\n"));
    assert_eq!(live.requests().len(), 1);
    let result = run.result();
    assert_eq!(result.model.as_ref().unwrap().endpoint, api_root(&live));
    let notes = &result.attempts[0].notes;
    assert!(
        notes.iter().any(|note| note.starts_with(&format!(
            "pool member {dead}/v1 set aside for 30 s after connection_refused"
        ))),
        "{notes:?}"
    );
    assert!(
        notes.contains(&format!(
            "answered by pool member {} (of 2)",
            api_root(&live)
        )),
        "{notes:?}"
    );
}

#[test]
fn a_pool_whose_members_all_fail_is_the_usual_model_error() {
    let (one, two) = (closed_port_url(), closed_port_url());
    let run = Test::new()
        .spec(spec("out.txt", &json!({})))
        .endpoint(&format!("{one},{two}"))
        .run();
    let error = run.assert_error(3, "connection_refused");
    assert!(
        error
            .message
            .starts_with("every member of the pool failed: ")
            && error.message.contains(&one)
            && error.message.contains(&two),
        "{}",
        error.message
    );
    run.assert_unchanged();
}

#[test]
fn a_malformed_pool_member_is_bad_input_naming_it() {
    let run = Test::new()
        .spec(spec("out.txt", &json!({})))
        .endpoint("http://127.0.0.1:1/v1, http://")
        .run();
    let error = run.assert_error(2, "usage");
    assert!(
        error
            .message
            .starts_with("LOCAL_TASK_ENDPOINT is `http://`"),
        "{}",
        error.message
    );
}

#[test]
fn num_ctx_is_capped_at_the_context_length_ollama_reports() {
    // The prompt plus the 4096-token reply reserve asks for 6144; the model takes 6000.
    let run = Test::new()
        .ollama()
        .context_length(6000)
        .spec(spec("out.txt", &json!({})))
        .script(Script::code("out.txt", "ok\n"))
        .run();
    run.assert_code(0);
    assert_eq!(run.requests.len(), 1);
    let options = &run.requests[0].body["options"];
    assert_eq!(options["num_ctx"], 6000, "{options}");

    // A server that does not say: the window is the prompt's estimate, as before.
    let run = Test::new()
        .ollama()
        .spec(spec("out.txt", &json!({})))
        .script(Script::code("out.txt", "ok\n"))
        .run();
    run.assert_code(0);
    assert_eq!(run.requests[0].body["options"]["num_ctx"], 6144);
}

/// A spec whose context cannot fit a 2048-token window.
fn too_large(test: Test) -> Test {
    test.file("big.txt", "word ".repeat(4000))
        .spec(spec("out.txt", &json!({"context_files": ["big.txt"]})))
        .script(Script::code("out.txt", "never\n"))
}

fn assert_refused_before_the_call(run: &crate::harness::Run, source: &str) {
    let error = run.assert_error(2, "prompt_too_large");
    for part in [
        "the prompt (about ",
        "tokens) and the reply (1024 tokens, the default reply reserve)",
        &format!("do not fit `{MODEL}`'s context window of 2048 tokens"),
        source,
        "the model was not called",
    ] {
        assert!(error.message.contains(part), "{part}: {}", error.message);
    }
    assert!(run.requests.is_empty(), "no chat request was sent");
    assert!(
        run.stderr.contains("cut the task smaller"),
        "{}",
        run.stderr
    );
    run.assert_unchanged();
}

#[test]
fn a_prompt_that_cannot_fit_ollamas_window_is_refused_before_any_chat_request() {
    let run = too_large(Test::new().ollama().context_length(2048)).run();
    assert_refused_before_the_call(&run, "`qwen2.context_length` in http://127.0.0.1:");
    assert!(run.result().error.unwrap().message.contains("/api/show"));
}

#[test]
fn a_prompt_that_cannot_fit_a_llama_cpp_window_is_refused_too() {
    let run = too_large(Test::new().context_length(2048)).run();
    assert_refused_before_the_call(&run, "`n_ctx` in http://127.0.0.1:");
    assert!(run.result().error.unwrap().message.contains("/props"));
}

#[test]
fn a_prompt_that_cannot_fit_a_vllm_window_is_refused_too() {
    let server = ModelServer::start(
        vec![Script::code("out.txt", "never\n")],
        vec![MODEL.to_owned()],
    );
    server.max_model_len(2048);
    let run = too_large(Test::new()).endpoint(&server.url).run();
    assert_refused_before_the_call(&run, "`max_model_len` in http://127.0.0.1:");
    assert!(server.requests().is_empty());
    assert!(run.result().error.unwrap().message.contains("/v1/models"));
}

#[test]
fn config_check_probes_every_pool_member_and_the_models_window() {
    let dead = closed_port_url();
    let live = ModelServer::start_speaking(Protocol::Ollama, Vec::new(), vec![MODEL.to_owned()]);
    live.context_length(32768);
    let config = format!(
        "[profiles.pool]\nprovider = \"ollama\"\nendpoints = [\"{}\", \"{dead}\"]\nmodel = \"{MODEL}\"\ncontext_window = 65536\n",
        live.url
    );
    let run = Test::new()
        .home_file(USER_CONFIG, config)
        .run_with(|_| vec!["config".into(), "--check".into(), "--json".into()]);
    run.assert_code(3);
    let probes: Vec<ProfileProbe> = serde_json::from_str(&run.stdout).unwrap();
    let pool = &probes[0];
    assert!(
        pool.reachable && pool.model_present == Some(true),
        "{}",
        run.stdout
    );
    assert_eq!(pool.endpoint.as_deref(), Some(live.url.as_str()));
    // The model's own limit is below the profile's.
    assert_eq!(pool.context_window, Some(32768));
    let source = pool.context_window_source.as_deref().unwrap();
    assert!(source.contains("/api/show"), "{source}");
    let reached: Vec<(bool, &str)> = pool
        .members
        .iter()
        .map(|m| (m.reachable, m.endpoint.as_str()))
        .collect();
    assert_eq!(reached, [(true, live.url.as_str()), (false, dead.as_str())]);
    assert!(
        run.stderr
            .contains(&format!("error: profile `pool`: pool member {dead}: ")),
        "{}",
        run.stderr
    );
    let table = Test::new()
        .home_file(
            USER_CONFIG,
            format!(
                "[profiles.pool]\nprovider = \"ollama\"\nendpoints = [\"{}\", \"{dead}\"]\nmodel = \"{MODEL}\"\n",
                live.url
            ),
        )
        .run_with(|_| vec!["config".into(), "--check".into()]);
    assert!(
        table.stdout.contains("1 of 2 pool members failing"),
        "{}",
        table.stdout
    );
}

#[test]
fn a_dry_run_names_every_pool_member_with_its_secrets_masked() {
    let run = Test::new()
        .spec(spec("out.txt", &json!({})))
        .endpoint("http://127.0.0.1:1/v1,http://me:secret@127.0.0.1:2/v1")
        .arg("--dry-run")
        .run();
    run.assert_code(0);
    let printed = run.json();
    assert_eq!(printed["endpoint"], "http://127.0.0.1:1/v1", "{printed}");
    assert_eq!(
        printed["pool"],
        json!(["http://127.0.0.1:1/v1", "http://me:***@127.0.0.1:2/v1"])
    );
    assert!(!run.stdout.contains("secret"));
}

#[test]
fn models_probes_every_pool_member() {
    let dead = closed_port_url();
    let live = ModelServer::start(Vec::new(), vec![MODEL.to_owned()]);
    let pool = format!("{},{dead}", live.url);
    let run = Test::new().run_with(move |_| {
        ["models", "--endpoint", pool.as_str(), "--json"]
            .map(str::to_owned)
            .to_vec()
    });
    run.assert_code(0);
    let reports: Vec<ServerReport> = serde_json::from_str(&run.stdout).unwrap();
    let seen: Vec<(bool, &[String])> = reports
        .iter()
        .map(|r| (r.reachable, r.models.as_slice()))
        .collect();
    assert_eq!(seen, [(true, &[MODEL.to_owned()][..]), (false, &[][..])]);
}

#[test]
fn a_profiles_pool_serves_a_routed_run() {
    let dead = closed_port_url();
    let live = ModelServer::start(
        vec![Script::code("out.txt", "served\n")],
        vec![MODEL.to_owned()],
    );
    let config = format!(
        "default_profile = \"pool\"\n[profiles.pool]\nprovider = \"openai\"\nendpoints = [\"{dead}\", \"{}\"]\nmodel = \"{MODEL}\"\n",
        live.url
    );
    let run = Test::new()
        .spec(spec("out.txt", &json!({})))
        .home_file(USER_CONFIG, config)
        .run();
    run.assert_code(0);
    assert_eq!(live.requests().len(), 1);
    let result = run.result();
    assert_eq!(result.model.as_ref().unwrap().endpoint, api_root(&live));
    let notes = &result.attempts[0].notes;
    assert!(
        notes
            .iter()
            .any(|note| note.starts_with(&format!("pool member {dead}/v1 set aside"))),
        "{notes:?}"
    );
}

#[test]
fn a_profiles_context_window_refuses_a_prompt_the_server_would_take() {
    let config = "default_profile = \"small\"\n[profiles.small]\ncontext_window = 2048\n";
    let run = too_large(Test::new().context_length(32768))
        .home_file(USER_CONFIG, config)
        .run();
    assert_refused_before_the_call(&run, "profile `small` context_window, user ");
}
