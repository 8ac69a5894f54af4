"""Does a refactor change what training computes? Trains every method (offline and online) for a few steps on
small synthetic Fashion-MNIST-shaped data (fp32, one thread, no compile) and writes, per method, every epoch's
loss terms and a SHA-256 of the final checkpoint's weights. Run it before and after a change and compare:

    PYTHONPATH=src python benchmarks/behaviour_check.py --out /tmp/before.json      # on the old tree
    PYTHONPATH=src python benchmarks/behaviour_check.py --out /tmp/after.json       # on the new tree
    python benchmarks/behaviour_check.py --compare /tmp/before.json /tmp/after.json  # identical, or what differs
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from pathlib import Path

import torch

OFFLINE = {  # method -> extra overrides (its augmentation where it needs one)
    "ce": [], "kd": [], "mix_kd": ["augment=mixup_two_perm"], "kd_view": ["augment=cutmix_pick"],
    "mixstd": ["augment=pmu"], "das_kd": ["data.crop_padding=0", "data.flip=false"], "dkd": [],
    "crd": ["method.nce_k=64"], "crd_kd": ["method.nce_k=64"], "crd_kd_view": ["method.nce_k=64", "augment=cutmix"],
}
ONLINE = {"dml": [], "kdcl": [], "one": [], "online_cutmix": ["augment=cutmix"], "cutnmix": ["augment=cut_n_mix"]}


def _digest(state: dict) -> str:
    h = hashlib.sha256()
    for key in sorted(state):
        value = state[key]
        if torch.is_tensor(value):
            h.update(key.encode())
            h.update(value.detach().cpu().contiguous().numpy().tobytes())
        elif isinstance(value, dict):
            h.update(key.encode())
            h.update(_digest(value).encode())
    return h.hexdigest()


def run_all(tmp: Path) -> dict:
    from mixdistill.config import load_config
    from mixdistill.data.synthetic import write_fashion_like
    from mixdistill.engine.checkpoint import load_checkpoint
    from mixdistill.engine.trainer import train

    torch.set_num_threads(1)
    root = write_fashion_like(tmp / "data", n_train=256, n_test=128)
    common = [f"data.root={root}", f"output_dir={tmp / 'runs'}", "data.batch_size=32", "data.eval_batch_size=128",
              "optim.epochs=2", "optim.schedule=onecycle", "optim.milestones=[]", "train.device=cpu",
              "train.precision=fp32", "train.compile=false", "train.threads=1", "train.progress=false",
              "train.tensorboard=false", "model.student=cnn5_w8"]
    teacher = load_config(None, common + ["name=teacher", "model.student=cnn5_w16"])
    train(teacher, quiet=True)
    results = {}
    for method, extra in {**OFFLINE, **ONLINE}.items():
        overrides = common + [f"name={method}", f"method={method}", *extra]
        if method in OFFLINE and method != "ce":
            overrides.append(f"model.teacher_checkpoint={teacher.run_dir / 'last.pt'}")
        cfg = load_config(None, overrides)
        train(cfg, quiet=True)
        metrics = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
        state = load_checkpoint(cfg.run_dir / "last.pt")
        results[method] = {
            "losses": [{k: v for k, v in m.items() if k.startswith(("train_", "test_")) or k.startswith("stat_")}
                       for m in metrics],
            "weights_sha256": _digest({"model": state["model"], "extra": state.get("distiller_extra", {})}),
        }
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="write the results here")
    p.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"))
    args = p.parse_args(argv)
    if args.compare:
        a, b = (json.loads(Path(x).read_text()) for x in args.compare)
        differ = [m for m in sorted(set(a) | set(b)) if a.get(m) != b.get(m)]
        for m in differ:
            print(f"{m}: DIFFERS\n  before {a.get(m)}\n  after  {b.get(m)}")
        print(f"{len(set(a) | set(b)) - len(differ)} of {len(set(a) | set(b))} methods bit-identical")
        return 1 if differ else 0
    with tempfile.TemporaryDirectory() as tmp:
        results = run_all(Path(tmp))
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"{len(results)} methods written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
