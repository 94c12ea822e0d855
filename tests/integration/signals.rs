//! Signals while a run is busy in a CPU-bound phase (extraction, the diff): the run stops
//! at once with the signal's exit code, and the tree is as it was.

use std::path::Path;
use std::time::{Duration, Instant};

use execute_local_task::cancel::STALL_AT_ENV;
use nix::sys::signal::Signal;
use serde_json::json;

use crate::harness::{Script, Test, spec};

/// Holds the run in `phase` (the debug-only stall hook, which keeps working until the run
/// is told to stop) and sends SIGTERM there. Without a test command the attempt's code would be kept at once.
fn sigterm_in(phase: &str) {
    let scratch = tempfile::tempdir().unwrap();
    let marker = scratch.path().join("stalled");
    let seen = marker.clone();
    let run = Test::new()
        .file("out.txt", "old\n")
        .spec(spec("out.txt", &json!({})))
        .script(Script::code("out.txt", "new\n"))
        .env(STALL_AT_ENV, &format!("{phase}:{}", marker.display()))
        .during(move |running| {
            wait_for(&seen);
            running.signal(Signal::SIGTERM);
            let_it_go(running.pid, &seen);
        })
        .run();
    let error = run.assert_error(143, "interrupted");
    assert!(
        error.message.contains("SIGTERM"),
        "{phase}: {}",
        error.message
    );
    assert!(run.result().files.is_empty(), "{phase}");
    run.assert_unchanged();
}

fn wait_for(marker: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "the run never reached the phase");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_signal_during_extraction_stops_the_run() {
    sigterm_in("extract");
}

#[test]
fn a_signal_during_the_diff_stops_the_run_and_undoes_its_writes() {
    sigterm_in("diff");
}

/// A second signal while the run cleans up after the first is not swallowed: it ends the
/// tool at once, with the exit code of the signal and no result.
#[test]
fn a_second_signal_ends_the_tool_at_once() {
    let scratch = tempfile::tempdir().unwrap();
    let ready = scratch.path().join("ready");
    let marker = scratch.path().join("cleanup");
    let (test_ready, seen) = (ready.clone(), marker.clone());
    let run = Test::new()
        .file("out.txt", "old\n")
        .spec(spec(
            "out.txt",
            &json!({"test_command": format!("touch {}; exec sleep 77", ready.display())}),
        ))
        .script(Script::code("out.txt", "new\n"))
        .env(STALL_AT_ENV, &format!("cleanup:{}", marker.display()))
        .during(move |running| {
            wait_for(&test_ready);
            running.signal(Signal::SIGTERM);
            wait_for(&seen);
            running.signal(Signal::SIGINT);
            let_it_go(running.pid, &seen);
        })
        .run();
    run.assert_code(130);
    assert!(
        run.stdout.trim().is_empty(),
        "the tool finished its cleanup: {}",
        run.stdout
    );
}

/// Waits for the tool to end after a signal; should it live on (the signal not seen),
/// releases the stalled phase so the test fails instead of hanging.
fn let_it_go(pid: u32, marker: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::fs::write(format!("{}.sent", marker.display()), "").unwrap();
}

/// Whether process `pid` still runs (a zombie waiting to be reaped does not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(") ")?.1.chars().next()?;
            Some(state != 'Z')
        })
        .unwrap_or(false)
}
