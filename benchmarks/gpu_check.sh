#!/usr/bin/env bash
# The GPU check: one prepared run of everything that needs a CUDA machine (README, "GPU").
#
#   benchmarks/gpu_check.sh --prepare        here, with network to the package index: pack the data
#                                            (.data/) and the wheels the GPU image lacks (.whl/)
#   benchmarks/gpu_check.sh [--dry-run] [part1|part2|all] [OUT]
#
# part1 (at most 8 minutes by its steps' time limits; not yet run on a GPU): environment, the whole test suite (CUDA tests
# included), benchmarks/glimpse_speed.py --device cuda, the default run with module.compile off
# and on (time to 99% test accuracy), experiment=cluttered_mnist (one seed, shortened to
# CLUTTERED_EPOCHS epochs). part2 (at most 4 minutes): experiment=cifar10 on the JPEG copy, 40
# epochs, one seed. Run the parts as two calls of a 10-minute device limit (or `all`, the
# default, where time allows); a part alone also reruns what failed. Carry .data and .whl (about 32 MB). Every step has a time limit, so a slow step cannot
# take the rest with it. OUT (default logs/gpu_check/<time>) gets two files: summary.md (a
# row per step, then the results) and gpu_check.tgz (every step's log, every run's metrics.json,
# .hydra/ and TensorBoard events; no checkpoints). The runs themselves stay in logs/gpu_check/runs.
set -uo pipefail
cd "$(dirname "$0")/.."

dry=0
part=all
out=""
for arg in "$@"; do
  case "$arg" in
    --dry-run) dry=1 ;;
    --prepare) part=prepare ;;
    part1 | part2 | all) part=$arg ;;
    -h | --help) sed -n '2,16p' "$0"; exit 0 ;;
    -*) echo "gpu_check.sh: unknown option $arg (see --help)" >&2; exit 2 ;;
    *) out=$arg ;;
  esac
done
out=${out:-${OUT:-logs/gpu_check/$(date +%Y-%m-%d_%H-%M-%S)}}
CLUTTERED_EPOCHS=${CLUTTERED_EPOCHS:-10}
export PYTHONUNBUFFERED=1
# The GPU image has torch, lightning, torchmetrics and tensorboard but not Hydra (README, "GPU"):
# --prepare builds the wheels of this environment's Hydra stack (pure Python, any CPython 3).
HYDRA_STACK="hydra-core omegaconf antlr4-python3-runtime"

if [ "$part" = prepare ]; then
  set -e
  src=${STN_DATA_DIR:-../shared/data}
  [ -d "$src/MNIST" ] || { echo "gpu_check.sh --prepare: no MNIST in $src (set STN_DATA_DIR)" >&2; exit 2; }
  mkdir -p .data .whl
  tar czf .data/mnist.tgz -C "$src" MNIST
  # 60,000 small JPEGs: 92 MB as a tar, 20 MB gzipped (their headers repeat)
  [ -d "$src/cifar10-jpeg" ] && tar czf .data/cifar10-jpeg.tgz -C "$src" cifar10-jpeg
  # shellcheck disable=SC2086
  wheels=$(python3 -m pip freeze | grep -i -E "^($(echo $HYDRA_STACK | tr ' ' '|'))==")
  # shellcheck disable=SC2086
  python3 -m pip wheel -q --no-deps -w .whl $wheels
  exclude=$(git rev-parse --git-path info/exclude)
  grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
  ls -l .data .whl
  exit 0
fi

runs=logs/gpu_check/runs

# run NAME LIMIT_S COMMAND...: one step, its log in $work/NAME.log, a row in summary.md
run() {
  local name=$1 limit=$2
  shift 2
  if [ "$dry" = 1 ]; then
    echo "$*"
    return 0
  fi
  local start rc
  start=$(date +%s.%N)
  timeout "$limit" "$@" >"$work/$name.log" 2>&1
  rc=$?
  local wall
  wall=$(python3 -c "import time; print(f'{time.time() - $start:.1f}')")
  echo "| $name | $rc | $wall | \`$*\` |" >>"$summary"
  echo "$name: exit $rc after $wall s (limit $limit s)"
}

setup() {
  if [ "$dry" = 1 ]; then return 0; fi
  work=$(mktemp -d)
  summary=$work/summary.md
  echo "| step | exit | wall s | command |" >"$summary"
  echo "|---|---|---|---|" >>"$summary"
  if ! python3 -c "import hydra" 2>/dev/null && [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
  fi
  mkdir -p .data
  [ -f .data/mnist.tgz ] && [ ! -d .data/MNIST ] && tar xzf .data/mnist.tgz -C .data
  [ -f .data/cifar10-jpeg.tgz ] && [ ! -d .data/cifar10-jpeg ] && tar xzf .data/cifar10-jpeg.tgz -C .data
  export STN_DATA_DIR=${STN_DATA_DIR:-$PWD/.data}
  export PYTHONPATH=$PWD:${PYTHONPATH:-}
}

# train NAME LIMIT_S OVERRIDES...: python train.py with its run folder $runs/NAME
train() {
  local name=$1 limit=$2
  shift 2
  run "$name" "$limit" python3 train.py trainer=gpu "hydra.run.dir=$runs/$name" "$@"
}

part1() {
  run env 30 bash -c "nvidia-smi; python3 -c 'import torch, lightning; print(torch.__version__, \
lightning.__version__, torch.cuda.get_device_name())'; grep -m1 'model name' /proc/cpuinfo"
  # notebooks need a Jupyter kernel, which the GPU image lacks
  run tests 150 python3 -m pytest -q -p no:cacheprovider --ignore=tests/test_notebooks.py
  run glimpse_speed 60 python3 benchmarks/glimpse_speed.py --device cuda
  train default 60
  train default_compile 90 module.compile=true
  train cluttered 90 experiment=cluttered_mnist seed=1 "trainer.max_epochs=$CLUTTERED_EPOCHS"
}

part2() {
  train cifar10 240 experiment=cifar10 data=cifar10_jpeg seed=1
}

setup
case "$part" in
  part1) part1 ;;
  part2) part2 ;;
  all) part1; part2 ;;
esac
if [ "$dry" = 0 ]; then
  python3 benchmarks/gpu_results.py "$runs" >>"$summary" 2>&1
  mkdir -p "$out"
  cp "$summary" "$out/summary.md"
  tar czf "$out/gpu_check.tgz" --exclude='*.ckpt' -C "$work" . -C "$PWD" "$runs" 2>/dev/null
  rm -rf "$work"
  cat "$out/summary.md"
fi
