# das2020 sweep B: a stable AlexNet-w025 student recipe (lr), from the das_a teachers
import sys
sys.path.insert(0, "docs/results/studies/sweeps")
from harness import *


def main():
    folder = "runs/sweeps/das_b"
    teachers = "runs/sweeps/das_a/runs"
    runs = []
    for lr in (0.01, 0.02):
        for c in ("none", "mixup"):
            for s in range(3):
                tree = base(data={"train_subset": 2000, "crop_padding": 0, "flip": False},
                            method={"name": "das_kd", "temperature": 20.0, "gamma": 0.5}, augment={"name": "none"},
                            model={"student": "alexnet_cifar_w025", "teacher_checkpoint": f"{teachers}/t__{c}__{s}/last.pt"},
                            optim={"lr": lr, "epochs": 70, "schedule": "step", "milestones": [35, 52]},
                            train={"eval_every": 14}, seed=s)
                runs.append((f"{lr}/{c}/{s}", tree, 0))
    rows = run(runs, folder)
    for lr in (0.01, 0.02):
        for c in ("none", "mixup"):
            a = [rows[f"{lr}/{c}/{s}"]["summary"]["last_acc"] for s in range(3)]
            e = [ece_of(folder, f"{lr}/{c}/{s}")[0] for s in range(3)]
            print(f"lr {lr} {c}: acc {ms(a)} {[round(x, 2) for x in a]} ece {ms(e)}", flush=True)


if __name__ == "__main__":
    main()
