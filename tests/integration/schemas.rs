//! `schema batch` and `schema config` against what the tool prints and reads: a batch's
//! lines, the README's example configs and the config `init` writes (which must also load
//! as a config, with the profiles it found); and the config schema against the keys the
//! config parser knows, so the two cannot drift apart.

use std::collections::BTreeSet;
use std::path::Path;

use execute_local_task::config::Config;
use serde_json::{Value, json};

use crate::harness::{Script, Test, assert_matches_batch_schema};

fn schema(run: &crate::harness::Run, which: &str) -> Value {
    let (code, stdout, stderr) = run.again(&["schema", which]);
    assert_eq!(code, 0, "{stderr}");
    serde_json::from_str(&stdout).unwrap()
}

fn validator(schema: &Value) -> jsonschema::Validator {
    jsonschema::validator_for(schema).expect("the schema compiles")
}

fn errors(validator: &jsonschema::Validator, value: &Value) -> Vec<String> {
    validator
        .iter_errors(value)
        .map(|error| format!("{error} at {}", error.instance_path()))
        .collect()
}

/// A TOML text as the JSON value a schema validates.
fn toml_as_json(text: &str) -> Value {
    let table: toml::Table = toml::from_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    serde_json::to_value(table).unwrap()
}

/// The TOML blocks of the README's "Configuration" section.
fn readme_configs() -> Vec<String> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let section = readme
        .split("\n## Configuration\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a Configuration section");
    section
        .split("```toml\n")
        .skip(1)
        .map(|block| block.split("```").next().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn schema_batch_is_the_librarys_and_every_line_of_a_batch_matches_it() {
    let test = Test::new()
        .file(
            "specs/a.json",
            crate::harness::spec("a.txt", &json!({"task_id": "a"})).to_string(),
        )
        .file(
            "specs/b.json",
            crate::harness::spec(
                "b.txt",
                &json!({"task_id": "b", "test_command": "false", "max_attempts": 1}),
            )
            .to_string(),
        )
        .route("a.txt", vec![Script::code("a.txt", "A\n")])
        .route("b.txt", vec![Script::code("b.txt", "B\n")]);
    let run = test.run_with(|_| vec!["specs".to_owned(), "--no-test".to_owned()]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(
        schema(&run, "batch"),
        execute_local_task::batch::line_schema()
    );
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", run.stdout);
    for line in &lines {
        assert_matches_batch_schema(line);
    }
    // Neither a summary with a field too many nor a result missing its status passes.
    let batch = validator(&schema(&run, "batch"));
    let mut summary: Value = serde_json::from_str(lines[2]).unwrap();
    summary["extra"] = json!(1);
    assert!(!batch.is_valid(&summary));
    let mut result: Value = serde_json::from_str(lines[0]).unwrap();
    result.as_object_mut().unwrap().remove("status");
    assert!(!batch.is_valid(&result));
}

#[test]
fn the_readmes_example_configs_match_the_config_schema_and_load() {
    let configs = readme_configs();
    assert!(configs.len() >= 2, "{configs:?}");
    let (user, repo) = (&configs[0], &configs[1]);
    let test = Test::new()
        .home_file(".config/execute-local-task/config.toml", user)
        .file(".execute-local-task/config.toml", repo);
    let run = test.run_with(|_| vec!["config".to_owned(), "--json".to_owned()]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let config: Config = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        config.profiles.keys().collect::<Vec<_>>(),
        ["large", "small", "small-lms"]
    );
    let validator = validator(&schema(&run, "config"));
    for text in &configs {
        let found = errors(&validator, &toml_as_json(text));
        assert!(found.is_empty(), "{found:?}\n{text}");
    }
    // What the parser refuses, the schema refuses too.
    for bad in [
        "[profiles.a]\ntemperatur = 0.0\n",
        "[profiles.a]\ntemperature = 3.0\n",
        "[profiles.a]\nprovider = \"gemini\"\n",
        "[profiles.a]\nendpoint = \"ftp://x\"\n",
        "[trust]\ngood_percent = 101\n",
        "[targets]\nsaved_share = 1.5\n",
        "[profiles.a]\nkinds = [\"poem\"]\n",
    ] {
        assert!(!validator.is_valid(&toml_as_json(bad)), "{bad}");
    }
}

#[test]
fn the_config_init_writes_loads_with_the_profiles_it_found_and_matches_the_schema() {
    for (ollama, provider) in [(false, "openai"), (true, "ollama")] {
        let test = Test::new().discovery(&[]);
        let test = if ollama { test.ollama() } else { test };
        let run = test.run_with(|_| vec!["init".to_owned()]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let (code, stdout, stderr) = run.again(&["config", "--json"]);
        assert_eq!(code, 0, "{stdout}\n{stderr}");
        let config: Config = serde_json::from_str(&stdout).unwrap();
        let default = config
            .default_profile
            .as_ref()
            .expect("init names a default profile")
            .value
            .clone();
        let profile = config
            .profiles
            .get(&default)
            .unwrap_or_else(|| panic!("no profile {default}: {stdout}"));
        assert_eq!(
            profile.model.as_ref().map(|m| m.value.as_str()),
            Some(crate::harness::MODEL)
        );
        assert_eq!(
            profile.provider.as_ref().map(|p| p.value.as_str()),
            Some(provider)
        );
        let written =
            std::fs::read_to_string(run.repo.join(".execute-local-task/config.toml")).unwrap();
        let validator = validator(&schema(&run, "config"));
        let found = errors(&validator, &toml_as_json(&written));
        assert!(found.is_empty(), "{found:?}\n{written}");
        // `check` triages the example spec (once its test exists) for that profile.
        std::fs::write(run.repo.join("test_slugify.py"), "").unwrap();
        let (code, stdout, stderr) = run.again(&["check", "task-specs/example.json"]);
        assert_eq!(code, 0, "{stdout}\n{stderr}");
    }

    // With no server found, the file holds only comments: an empty config.
    let empty = Test::new()
        .discovery(&[])
        .env("LOCAL_TASK_DISCOVERY_PORTS", "1")
        .run_with(|_| vec!["init".to_owned()]);
    assert_eq!(empty.code, 0, "{}", empty.stderr);
    let (code, stdout, stderr) = empty.again(&["config", "--json"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let config: Config = serde_json::from_str(&stdout).unwrap();
    assert!(config.profiles.is_empty(), "{stdout}");
}

/// The keys the config parser knows in each table, as its unknown-key error lists them.
fn known_keys(table: &str) -> BTreeSet<String> {
    let text = match table {
        "" => "qqqqqqqqqq = 1\n".to_owned(),
        table => format!("[{table}]\nqqqqqqqqqq = 1\n"),
    };
    let run = Test::new()
        .file(".execute-local-task/config.toml", &text)
        .run_with(|_| vec!["config".to_owned(), "--json".to_owned()]);
    assert_eq!(run.code, 2, "{}", run.stdout);
    let message = run.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let known = message
        .split("known keys: ")
        .nth(1)
        .unwrap_or_else(|| panic!("no known keys in: {message}"));
    known.split(", ").map(|key| key.trim().to_owned()).collect()
}

fn schema_keys(schema: &Value, definition: Option<&str>) -> BTreeSet<String> {
    let object = match definition {
        Some(name) => &schema["definitions"][name],
        None => schema,
    };
    object["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("no properties in {definition:?}"))
        .keys()
        .cloned()
        .collect()
}

#[test]
fn the_config_schema_has_exactly_the_keys_the_config_parser_knows() {
    let schema = execute_local_task::config_schema::json_schema();
    for (table, definition) in [
        ("", None),
        ("profiles.p", Some("ProfileTable")),
        ("triage", Some("TriageTable")),
        ("ledger", Some("LedgerTable")),
        ("trust", Some("TrustTable")),
        ("savings", Some("SavingsTable")),
        ("targets", Some("TargetsTable")),
        ("validator", Some("ValidatorTable")),
    ] {
        assert_eq!(
            schema_keys(&schema, definition),
            known_keys(table),
            "table [{table}]: `src/config_schema.rs` and `src/config.rs` differ"
        );
    }
}
