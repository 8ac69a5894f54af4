# wang2022 sweep C: the CPU protocol candidate: 1k subset, batch 64, lr 0.05, 67 epochs (1,005 steps), long x2
import sys
sys.path.insert(0, "docs/results/studies/sweeps")
from harness import *


def main():
    folder = "runs/sweeps/wang_c"
    ckpt = "runs/sweeps/wang_b/runs/teacher/last.pt"  # wang_b.py's teacher
    methods = {"ce": {"method": {"name": "ce"}}, "kd": {"method": {"name": "kd"}},
               "kd_cutmix": {"method": {"name": "kd_view"}, "augment": {"name": "cutmix"}},
               "kd_pick": {"method": {"name": "kd_view"}, "augment": {"name": "cutmix_pick", "criterion": "kl"}}}
    runs = []
    for long in (1, 2):
        for m, e in methods.items():
            if long == 2 and m in ("kd_cutmix", "kd_pick"):
                continue
            for s in range(3):
                tree = base(data={"train_subset": 1000, "batch_size": 64}, model={"student": "cnn5_w8", "teacher_checkpoint": ckpt},
                            optim={"lr": 0.05, "epochs": 67, "epoch_factor": long, "schedule": "onecycle", "milestones": []},
                            train={"eval_every": 17}, augment=e.get("augment", {"name": "none"}), method=e["method"], seed=s)
                runs.append((f"{long}/{m}/{s}", tree, 0))
    rows = run(runs, folder)
    for long in (1, 2):
        for m in methods:
            if f"{long}/{m}/0" not in rows:
                continue
            r = [rows[f"{long}/{m}/{s}"]["summary"] for s in range(3)]
            print(f"x{long} {m}: acc {ms([x['last_acc'] for x in r])} {[round(x['last_acc'], 2) for x in r]} "
                  f"loss {ms([x['last_test_loss'] for x in r])} time {ms([x['train_time_s'] for x in r])}", flush=True)


if __name__ == "__main__":
    main()
