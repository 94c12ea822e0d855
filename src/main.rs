//! The `execute-local-task` command: a thin entry point to the library's [`cli`](execute_local_task::cli).

fn main() -> std::process::ExitCode {
    execute_local_task::run()
}
