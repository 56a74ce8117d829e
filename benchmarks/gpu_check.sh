#!/usr/bin/env bash
# One prepared GPU check (limits sum to 570 s; under 10 minutes on one H200): versions, the CUDA tests that are
# skipped on CPU, the step and statistics benchmarks on CUDA, and a short autoencoder run.
#
# Usage (from the repository root): bash benchmarks/gpu_check.sh
#   PYTHON   interpreter with a CUDA build of torch (default: .venv/bin/python if it exists,
#            else python3, else python); src/ goes first on PYTHONPATH, so this working tree
#            is what runs, installed there or not
#   .whl/    wheels of pure-Python dependencies the GPU machine lacks (prodigyopt and
#            schedulefree, for the autoencoder's baselines), installed into a temporary folder
#            on PYTHONPATH when present. Prepare them here (the folder is git-ignored):
#              python3 -m pip download --no-deps --only-binary=:all: -d .whl \
#                prodigyopt==1.1.2 schedulefree==1.4.1
#            and name .whl in the device tool's `carry`.
#   OUT      folder for the outputs (default: gpu_check_out): seven logs (versions with
#            nvidia-smi, cuda_tests, step_overhead, head_statistics, head_statistics_w64,
#            slimtik_step, autoencoder) and autoencoder_summary.json
#   MNIST    MNIST IDX folder (default: the first of shared/data/mnist, ../shared/data/mnist,
#            ../../shared/data/mnist;
#            without one the autoencoder uses scikit-learn's bundled digits)
# Nothing here downloads. Each step has its own time limit; a failing step is reported and the
# script goes on, and exits non-zero at the end if any step failed. With the device tool: run
# `bash benchmarks/gpu_check.sh` with carry [".whl"] and timeout_s 600 (the limits leave 30 s
# for the set-up); the logs come back from $OUT.
set -u
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python
  elif command -v python3 >/dev/null; then PYTHON=python3
  else PYTHON=python; fi
fi
if compgen -G ".whl/*.whl" >/dev/null; then
  site=$(mktemp -d)
  trap 'rm -rf "$site"' EXIT
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl \
    && export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
if [ -z "${MNIST:-}" ]; then
  for dir in shared/data/mnist ../shared/data/mnist ../../shared/data/mnist; do
    if [ -d "$dir" ]; then MNIST=$dir; break; fi
  done
fi
export PYTHONUNBUFFERED=1
failed=()

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit} s): $*"
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc after $((SECONDS - start)) s"
  if [ "$rc" -ne 0 ]; then failed+=("$name (exit $rc)"); fi
}

step versions 60 "$PYTHON" -c '
import torch
print("torch", torch.__version__, "CUDA", torch.version.cuda, "cuDNN",
      torch.backends.cudnn.version(), "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))
else:
    raise SystemExit("no CUDA device visible to torch")
'
command -v nvidia-smi >/dev/null && nvidia-smi | tee -a "$OUT/versions.log"

# tests that need CUDA (skipped on CPU; tests/test_device.py and the CUDA statistics of
# tests/test_heads.py), with the skip reasons listed
step cuda_tests 120 "$PYTHON" -m pytest tests -q -rs -k "cuda or gpu" -p no:cacheprovider
step step_overhead 120 "$PYTHON" benchmarks/step_overhead.py --device cuda --runs 3 --steps 20
step head_statistics 45 "$PYTHON" benchmarks/head_statistics.py --device cuda --repeats 21
step head_statistics_w64 45 "$PYTHON" benchmarks/head_statistics.py --device cuda --width 64 \
  --repeats 11
step slimtik_step 60 "$PYTHON" benchmarks/slimtik_step.py --device cuda --quick
AE_DATA=()
if [ -n "${MNIST:-}" ]; then AE_DATA=(--data "$MNIST"); fi
# its output folder lies outside $OUT (the device tool returns at most 8 files); its summary
# comes back as the eighth file, beside the seven logs
ae_out=$(mktemp -u -d)
step autoencoder 120 "$PYTHON" -m slimtrain run autoencoder "${AE_DATA[@]}" --quick \
  --device cuda --out "$ae_out" --no-progress
[ -f "$ae_out/summary.json" ] && cp "$ae_out/summary.json" "$OUT/autoencoder_summary.json"

if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED: ${failed[*]}"
  exit 1
fi
echo "all GPU checks passed; logs in $OUT"
