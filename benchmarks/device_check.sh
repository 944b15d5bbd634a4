#!/usr/bin/env bash
# Every GPU figure of the throughput work in one command (9 minutes at most), for a GPU machine that has
# PyTorch but not the sweep's other packages: Gaussian-vs-plain and shaped-vs-plain training ratios
# (ResNet-50 at 224 px, and cifar_resnet20 at 32 px), with shaping maps from an IG-4 refresh and from
# training gradients; then seed runs per GPU-hour of a real CIFAR-10 sweep with trials sharing the GPU
# (0.25 GPU each) and with one GPU per trial. Each step has its own time limit and writes its figures as soon as it has them, so a step cut
# short costs only its own.
#
#   bash benchmarks/make_device_bundle.sh                       # here, once: .whl/pydeps.tar.xz
#   cp cifar10-jpeg.tgz .whl/                                   # CIFAR-10 as JPEG class folders, train/ and test/
#   bash benchmarks/device_check.sh                             # there, from the checkout, carrying .whl
#
# Figures go to $OUT (default: ./device_out). Settings, for a smaller check (e.g. on CPU):
# RESNET_FLAGS, CIFAR_FLAGS (benchmarks/gpu_targets.py), SWEEP_FLAGS (benchmarks/gpu_sweep.py),
# DATA_DIR (an unpacked CIFAR-10 folder with train/, val/ and test/: skips the unpacking), SKIP_BUNDLE=1
# (the packages are importable already), and the limits RESNET_S, CIFAR_S, SWEEP_S in seconds.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-$PWD/device_out}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python=python3
if [ "${SKIP_BUNDLE:-0}" != 1 ]; then
  mkdir -p /tmp/pydeps && tar -xJf .whl/pydeps.tar.xz -C /tmp/pydeps || exit 1
  export PYTHONPATH="/tmp/pydeps:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
{ date; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1; nproc; free -g; } > "$out/machine.txt"
$python - <<'PY' 2>&1 | tee -a "$out/machine.txt" || exit 1
import captum, mlflow, optuna, plotly, ray, torch, torchvision
print("torch", torch.__version__, "torchvision", torchvision.__version__, "ray", ray.__version__, "captum",
      captum.__version__, "optuna", optuna.__version__, "mlflow", mlflow.__version__, "cuda", torch.cuda.is_available())
PY

step() {  # name, seconds, command...: run one step under its limit, its output in $out/<name>.log
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit} s)"
  local started=$SECONDS
  timeout --kill-after=10 "$limit" "$@" > "$out/$name.log" 2>&1
  echo "== $name: exit $?, $((SECONDS - started)) s"
  grep -E '^\[row\]|^gpu_sweep' "$out/$name.log" | cut -c1-1500
}

# shellcheck disable=SC2086
step targets_resnet50 "${RESNET_S:-140}" $python benchmarks/gpu_targets.py --targets noise,shaping \
  --json "$out/targets_resnet50.json" ${RESNET_FLAGS:-}
# shellcheck disable=SC2086
step targets_cifar "${CIFAR_S:-60}" $python benchmarks/gpu_targets.py --targets noise,shaping \
  --json "$out/targets_cifar.json" ${CIFAR_FLAGS:---arch cifar_resnet20 --image-size 32 --classes 10 --batch 512 \
  --steps 50 --refresh-images 8192 --refresh-batch 1024}

data="${DATA_DIR:-}"
if [ -z "$data" ]; then  # train/ and test/ as packed; val/: the last 500 file names of each training class
  data=/tmp/cifar10
  mkdir -p "$data" && tar -xzf .whl/cifar10-jpeg.tgz -C "$data" || exit 1
  for class in "$data"/train/*/; do
    name=$(basename "$class")
    mkdir -p "$data/val/$name"
    find "$class" -name '*.jpg' | sort | tail -n 500 | xargs mv -t "$data/val/$name"
  done
fi
sweeps=$(mktemp -d)
# shellcheck disable=SC2086
step gpu_sweep "${SWEEP_S:-320}" $python benchmarks/gpu_sweep.py --data-dir "$data" --out-dir "$sweeps" \
  --json "$out/gpu_sweep.json" ${SWEEP_FLAGS:---gpus-per-worker 0.25 1 --num-samples 4 2 --epochs 4}
tar -czf "$out/gpu_sweep_logs.tgz" -C "$sweeps" --exclude=ray --exclude=mlflow.db . 2>/dev/null
exit 0
