fn main() -> std::process::ExitCode {
    execute_local_task::run()
}
