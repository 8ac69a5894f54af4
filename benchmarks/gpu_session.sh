#!/usr/bin/env bash
# One prepared GPU session, under 10 minutes, so that a lent GPU is spent measuring, not setting up.
#
#   1. Here (a machine with pip and internet), once: benchmarks/gpu_session.sh wheels
#      downloads the packages mixdistill needs that a GPU image with PyTorch usually lacks (pydantic and
#      its own) as Python 3.12 manylinux wheels into .whl/ (add `/.whl/` to .git/info/exclude).
#   2. There, from the repository root, with .whl carried along: benchmarks/gpu_session.sh run OUT_DIR
#      Steps, most important first, each under its own time limit (a step that fails or runs out of time is
#      logged and the next one runs; the limits add up to 580 s, inside a 10-minute command), every step's
#      output in OUT_DIR/session.log; six result files in all:
#      - environment: nvidia-smi, torch, CUDA, the GPU's name;
#      - the CUDA bench, KD resnet32x4 -> resnet8x4 at batch 64: the reference loop, the trainer's defaults
#        (compile on CUDA), the eager teacher and train.cuda_graphs=true (bench_cuda_session.json/.md);
#      - two epochs of the full CRD protocol (configs/cifar100_crd.yaml: 50,000 CIFAR-100-shaped images,
#        batch 64) on synthetic data in the real pickle format with a random teacher (a GPU machine reaches no
#        network, so neither CIFAR-100 nor the pretrained teachers can be fetched there), with the defaults
#        and again with train.cuda_graphs=true: the second epoch's time times 240 is the full run's training
#        time (full_run_metrics.jsonl, full_run_graphs_metrics.jsonl);
#      - where the step's time goes (benchmarks/profile_step.py: wall vs kernel time, launches; profile_cuda.json).
#   benchmarks/gpu_session.sh check OUT_DIR runs the same steps on this machine's CPU at toy size (128 images,
#   one bench round, no compile, no CUDA variants), failing on the first step that fails: that the session still
#   works is tested (tests/test_bench.py::test_the_prepared_gpu_session_runs_its_steps), so a lent GPU is not
#   spent debugging it.
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
    log="$out/session.log"
    : >"$log"
    if [ "$mode" = check ]; then
      device=cpu n_train=128 n_test=64 budget=60 variants=project,eager_teacher
      bench_extra=(--quick --steps 1 --rounds 1 --warmup 0 --compile false)
      profile_extra=(--device cpu --pair cnn5_w16-cnn5_w8 --variants project --steps 1 --warmup 1 --compile false)
    else
      device=cuda n_train=50000 n_test=10000 budget=200 variants=project,eager_teacher,cuda_graphs
      bench_extra=()
      profile_extra=(--device cuda --variants project,cuda_graphs)
    fi
    step() {  # step SECONDS CMD...: CMD under a time limit, its output shown and appended to the session log;
      local limit=$1  # a failed step ends a check, not a run
      shift
      echo "=== $(date -u +%H:%M:%S) $*" | tee -a "$log"
      if timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$log"; then return 0; fi
      echo "=== step failed or ran past ${limit} s: $*" | tee -a "$log"
      if [ "$mode" = check ]; then echo "gpu_session.sh check: failed: $*" >&2; exit 1; fi
    }
    if [ "$mode" = run ] && compgen -G ".whl/*.whl" >/dev/null; then
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
      export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
    fi
    export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
    { nvidia-smi || true; python3 -c "import torch; print(torch.__version__, torch.version.cuda,
      torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')"; } 2>&1 | tee -a "$log"
    step 250 python3 -m mixdistill bench --device "$device" --cases kd --pairs resnet32x4-resnet8x4 \
      --variants "$variants" --time-budget "$budget" "${bench_extra[@]}" --out "$out" --tag cuda_session --overwrite
    data=$(mktemp -d)
    step 30 python3 -m mixdistill.data.synthetic cifar100 "$data" "$n_train" "$n_test"
    step 30 python3 -c "import sys, torch; from mixdistill.models import create_model; torch.save({'model':
      create_model('resnet32x4', 100).state_dict(), 'arch': 'resnet32x4'}, sys.argv[1])" "$data/teacher.pt"
    full_run() {  # full_run SECONDS NAME OVERRIDES...: two epochs of the CRD protocol, metrics into OUT_DIR
      local limit=$1 name=$2
      shift 2
      step "$limit" python3 -m mixdistill train configs/cifar100_crd.yaml "data.root=$data" data.download=false \
        "model.teacher_checkpoint=$data/teacher.pt" optim.epochs=2 optim.milestones=[1] "output_dir=$data/runs" \
        "name=$name" train.progress=false "$@"
      cp "$data/runs/$name/metrics.jsonl" "$out/${name}_metrics.jsonl" 2>/dev/null || [ "$mode" = run ]
    }
    full_run 110 full_run
    if [ "$mode" = run ]; then full_run 80 full_run_graphs train.cuda_graphs=true; fi
    step 80 python3 benchmarks/profile_step.py "${profile_extra[@]}" --out "$out"
    rm -rf "$data"
    ;;
  *) echo "usage: benchmarks/gpu_session.sh wheels | run OUT_DIR | check OUT_DIR" >&2; exit 2 ;;
esac
