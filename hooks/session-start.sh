#!/bin/sh
# SessionStart hook of the execute-local-task plugin: one line on whether delegation can
# work now. Always exits 0: a missing server must not disturb the session.
if ! command -v execute-local-task >/dev/null 2>&1; then
    echo "execute-local-task: not installed (cargo install --locked --path <its repository>)"
elif execute-local-task models >/dev/null 2>&1; then
    echo "execute-local-task: a local model server is reachable (execute-local-task models lists it)"
else
    echo "execute-local-task: no local model server answered; start Ollama or LM Studio to delegate tasks"
fi
exit 0
