#!/usr/bin/env bash
# conformance/install.sh [VENV_DIR]
#
# Idempotently installs a real llama.cpp inference server (llama-cpp-python's
# OpenAI-compatible server) plus gguf-py into a Python venv, for the
# conformance test tier (tests/integration/conformance.rs).
#
#   VENV_DIR  defaults to .venv-conformance at the repository root, where the
#             tests look for it (or set LOCAL_TASK_CONFORMANCE_PYTHON to the
#             venv's bin/python when it lives elsewhere)
#   PYTHON    the interpreter that creates the venv (default python3; 3.11+,
#             which the pinned numpy needs)
#
# Needs a C/C++ compiler. No system cmake is needed: pip builds
# llama-cpp-python with scikit-build-core, which installs cmake and ninja
# from PyPI into its isolated build environment when none is found.
#
# Building llama-cpp-python compiles llama.cpp from source (~8.5 min on 2
# cores). If the venv already imports the pinned versions, this exits at once.
# All progress messages go to stderr.
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION="0.3.36"
GGUF_VERSION="0.19.0"
NUMPY_SPEC="numpy==2.4.6"

root="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${1:-$root/.venv-conformance}"
PYTHON="${PYTHON:-python3}"

log() { printf '[install.sh] %s\n' "$*" >&2; }

check_installed() {
    [ -x "$VENV/bin/python" ] || return 1
    "$VENV/bin/python" - "$LLAMA_CPP_PYTHON_VERSION" "$GGUF_VERSION" <<'EOF' >/dev/null 2>&1
import sys
from importlib.metadata import version
want_llama, want_gguf = sys.argv[1], sys.argv[2]
assert version("llama-cpp-python") == want_llama, version("llama-cpp-python")
assert version("gguf") == want_gguf, version("gguf")
import llama_cpp, llama_cpp.server.app, gguf, numpy, uvicorn, fastapi, sse_starlette  # noqa: F401
EOF
}

# build.rs decides whether `cargo test` runs the conformance tier or ignores it; touching
# it makes the next build look for the server again.
rebuild_tests() { touch "$root/build.rs"; }

if check_installed; then
    log "venv $VENV already has llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION and gguf==$GGUF_VERSION; nothing to do"
    rebuild_tests
    exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
    log "creating venv $VENV with $PYTHON -m venv"
    if ! "$PYTHON" -m venv "$VENV"; then
        log "ERROR: $PYTHON -m venv failed; install Python's venv module (on Debian/Ubuntu: apt-get install python3-venv) or set PYTHON to another interpreter"
        exit 1
    fi
else
    log "reusing existing venv $VENV"
fi

log "upgrading pip/wheel in $VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip wheel >&2

log "installing gguf==$GGUF_VERSION and $NUMPY_SPEC"
"$VENV/bin/python" -m pip install "gguf==$GGUF_VERSION" "$NUMPY_SPEC" >&2

export CMAKE_ARGS="${CMAKE_ARGS:--DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DGGML_NATIVE=OFF}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
log "building llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION from source"
log "  CMAKE_ARGS=$CMAKE_ARGS"
log "  CMAKE_BUILD_PARALLEL_LEVEL=$CMAKE_BUILD_PARALLEL_LEVEL"
log "  (this compiles llama.cpp; expect roughly 8-9 minutes on 2 cores)"
start=$(date +%s)
"$VENV/bin/python" -m pip install --verbose \
    "llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION" >&2
log "llama-cpp-python build+install took $(( $(date +%s) - start )) s"

if check_installed; then
    rebuild_tests
    log "OK: $VENV has llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION, gguf==$GGUF_VERSION"
else
    log "ERROR: installation finished but the import check failed:"
    "$VENV/bin/python" -c 'import llama_cpp, llama_cpp.server.app, gguf; print(llama_cpp.__version__, gguf.__file__)' >&2 || true
    exit 1
fi
