//! Process hardening done once at start-up, before anything reads a credential: the tool's
//! memory and environment are closed to other processes of the same user.

/// Makes this process non-dumpable (`prctl(PR_SET_DUMPABLE, 0)`).
///
/// The test command runs code a model wrote, as the same user as the tool, and the tool's
/// API keys are in its environment. The test's own environment is cleaned
/// (`test_run`), but without this it could still read `/proc/<tool pid>/environ` or
/// `/proc/<tool pid>/mem`. A non-dumpable process's `/proc` files are readable only with
/// `CAP_SYS_PTRACE`: root, or a user who may trace any process, still can; no ordinary
/// process of the same user can. (It also means no core dump, which would hold the keys.)
///
/// Programs the tool starts (git, the test's shell) are not affected: `execve` makes a
/// process dumpable again.
pub fn close_process_to_same_user() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    nix::sys::prctl::set_dumpable(false).map_err(std::io::Error::from)?;
    Ok(())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    /// In a child process, so the test runner's own state is left alone: after the call
    /// the kernel reports the process non-dumpable.
    #[test]
    fn the_process_is_not_dumpable_after_the_call() {
        // SAFETY: the child only makes two system calls and leaves with `_exit`, all
        // async-signal-safe, so forking a multi-threaded test runner is sound.
        match unsafe { nix::unistd::fork() }.expect("fork") {
            nix::unistd::ForkResult::Child => {
                let code = match (
                    super::close_process_to_same_user(),
                    nix::sys::prctl::get_dumpable(),
                ) {
                    (Ok(()), Ok(false)) => 0,
                    _ => 1,
                };
                // SAFETY: leaves the child at once, without running the runner's handlers.
                unsafe { nix::libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let status = nix::sys::wait::waitpid(child, None).expect("wait");
                assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
    }
}
