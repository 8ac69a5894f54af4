#!/usr/bin/env bash
# One prepared GPU session, under 10 minutes, so that a lent GPU is spent measuring, not setting up.
#
#   1. Here (a machine with pip and internet), once: benchmarks/gpu_session.sh wheels
#      downloads the packages mixdistill needs that a GPU image with PyTorch usually lacks (pydantic and
#      its own) as Python 3.12 manylinux wheels into .whl/ (add `/.whl/` to .git/info/exclude).
#   2. There, from the repository root, with .whl carried along: benchmarks/gpu_session.sh run OUT_DIR
#      - environment: nvidia-smi, torch, CUDA, the GPU's name;
#      - the CUDA bench, KD resnet32x4 -> resnet8x4 at batch 64: the reference loop, the trainer's defaults
#        (compile on CUDA) and CUDA graphs (bench_cuda_session.json/.md), 240 s budget;
#      - a short run of the full CRD protocol (configs/cifar100_crd.yaml: 50,000 CIFAR-100-shaped images,
#        batch 64) for 2 epochs on synthetic data in the real pickle format with a random teacher (a GPU
#        machine reaches no network, so neither CIFAR-100 nor the pretrained teachers can be fetched there):
#        its epoch time times 240 is the full run's training time (full_run_metrics.jsonl, full_run.log).
#   benchmarks/gpu_session.sh check OUT_DIR runs the same steps on this machine's CPU at toy size (128 images,
#   one bench round, no compile), failing on the first step that fails: that the session still works is tested
#   (tests/test_bench.py::test_the_prepared_gpu_session_runs_its_steps), so a lent GPU is not spent debugging it.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  wheels)
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d .whl pydantic pydantic-core annotated-types typing-inspection
    ;;
  run|check)
    mode=$1
    out=${2:?usage: gpu_session.sh run|check OUT_DIR}
    mkdir -p "$out"
    if [ "$mode" = check ]; then
      device=cpu n_train=128 n_test=64 budget=60 bench_extra=(--quick --steps 1 --rounds 1 --warmup 0 --compile false)
    else
      device=cuda n_train=50000 n_test=10000 budget=240 bench_extra=()
    fi
    step() {  # step LOG CMD...: CMD's output shown and kept in LOG; a failed step ends a check, not a run
      local log=$1
      shift
      if "$@" 2>&1 | tee "$log"; then return 0; fi
      if [ "$mode" = check ]; then echo "gpu_session.sh check: failed: $*" >&2; exit 1; fi
    }
    if compgen -G ".whl/*.whl" >/dev/null; then
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
      export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
    fi
    export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
    { nvidia-smi || true; python3 -c "import torch; print(torch.__version__, torch.version.cuda,
      torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')"; } 2>&1 | tee "$out/environment.txt"
    step "$out/bench.log" timeout 300 python3 -m mixdistill bench --device "$device" --cases kd \
      --pairs resnet32x4-resnet8x4 --variants project,cuda_graphs --time-budget "$budget" "${bench_extra[@]}" \
      --out "$out" --tag cuda_session
    data=$(mktemp -d)
    python3 -m mixdistill.data.synthetic cifar100 "$data" "$n_train" "$n_test"
    python3 - "$data/teacher.pt" <<'PY'
import sys, torch
from mixdistill.models import create_model
torch.save({"model": create_model("resnet32x4", 100).state_dict(), "arch": "resnet32x4"}, sys.argv[1])
PY
    step "$out/full_run.log" timeout 240 python3 -m mixdistill train configs/cifar100_crd.yaml "data.root=$data" \
      data.download=false "model.teacher_checkpoint=$data/teacher.pt" optim.epochs=2 optim.milestones=[1] \
      "output_dir=$data/runs" name=full train.progress=false
    cp "$data/runs/full/metrics.jsonl" "$out/full_run_metrics.jsonl" 2>/dev/null || [ "$mode" = run ]
    ;;
  *) echo "usage: benchmarks/gpu_session.sh wheels | run OUT_DIR | check OUT_DIR" >&2; exit 2 ;;
esac
