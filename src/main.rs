//! The `execute-local-task` command: a thin entry point to the library's [`cli`](execute_local_task::cli).

fn main() -> std::process::ExitCode {
    // Before anything else, while the process is single-threaded and holds no key yet in
    // memory other than its environment. On Linux this cannot fail for these arguments;
    // elsewhere it does nothing, so a failure is no reason to refuse to run.
    let _ = execute_local_task::harden::close_process_to_same_user();
    execute_local_task::run()
}
