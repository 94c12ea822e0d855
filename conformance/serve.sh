#!/usr/bin/env bash
# conformance/serve.sh MODEL.gguf ALIAS N_CTX PORT [VENV]
#
# Runs llama-cpp-python's OpenAI-compatible server in the foreground on
# 127.0.0.1:PORT.  Equivalent to:
#   $VENV/bin/python -m llama_cpp.server --model M.gguf --model_alias NAME \
#       --n_ctx N --port P --host 127.0.0.1
# VENV defaults to .venv-conformance at the repository root (see install.sh).
# For trying the tool by hand against a model made by make_model.py.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [ $# -lt 4 ]; then
    echo "usage: $0 MODEL.gguf ALIAS N_CTX PORT [VENV]" >&2
    exit 2
fi
model="$1" alias="$2" n_ctx="$3" port="$4" venv="${5:-$here/../.venv-conformance}"
exec "$venv/bin/python" -m llama_cpp.server \
    --model "$model" --model_alias "$alias" \
    --n_ctx "$n_ctx" --port "$port" --host 127.0.0.1
