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
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  wheels)
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d .whl pydantic pydantic-core annotated-types typing-inspection
    ;;
  run)
    out=${2:?usage: gpu_session.sh run OUT_DIR}
    mkdir -p "$out"
    if compgen -G ".whl/*.whl" >/dev/null; then
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
      export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
    fi
    export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
    { nvidia-smi || true; python3 -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"; } \
      2>&1 | tee "$out/environment.txt"
    timeout 300 python3 -m mixdistill bench --device cuda --cases kd --pairs resnet32x4-resnet8x4 \
      --variants project,cuda_graphs --time-budget 240 --out "$out" --tag cuda_session 2>&1 | tee "$out/bench.log" || true
    data=$(mktemp -d)
    python3 -m mixdistill.data.synthetic cifar100 "$data" 50000 10000
    python3 - "$data/teacher.pt" <<'PY'
import sys, torch
from mixdistill.models import create_model
torch.save({"model": create_model("resnet32x4", 100).state_dict(), "arch": "resnet32x4"}, sys.argv[1])
PY
    timeout 240 python3 -m mixdistill train configs/cifar100_crd.yaml "data.root=$data" data.download=false \
      "model.teacher_checkpoint=$data/teacher.pt" optim.epochs=2 optim.milestones=[1] "output_dir=$data/runs" \
      name=full train.progress=false 2>&1 | tee "$out/full_run.log" || true
    cp "$data/runs/full/metrics.jsonl" "$out/full_run_metrics.jsonl" 2>/dev/null || true
    ;;
  *) echo "usage: benchmarks/gpu_session.sh wheels | run OUT_DIR" >&2; exit 2 ;;
esac
