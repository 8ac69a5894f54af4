# das2020 sweep A: teacher over-confidence gate and student plateau, 3 seeds
import sys, statistics, json
sys.path.insert(0, "docs/results/studies/sweeps")
from harness import *

def main():
    folder = "runs/sweeps/das_a"
    conds = {"none": {"augment": {"name": "none"}}, "mixup": {"augment": {"name": "mixup", "alpha": 1.0}},
             "cutmix": {"augment": {"name": "cutmix", "alpha": 1.0, "partner": "permutation"}}}
    teacher = base(data={"train_subset": 2000, "crop_padding": 0, "flip": False}, model={"student": "cnn5_w16"},
                   method={"name": "ce"}, optim={"lr": 0.05, "epochs": 80, "schedule": "step", "milestones": [40, 60]},
                   train={"eval_every": 20})
    runs = [(f"t/{c}/{s}", merge(merge(teacher, e), {"seed": s}), 0) for c, e in conds.items() for s in range(3)]
    student = base(data={"train_subset": 2000, "crop_padding": 0, "flip": False},
                   method={"name": "das_kd", "temperature": 20.0, "gamma": 0.5}, augment={"name": "none"},
                   optim={"lr": 0.05, "epochs": 60, "schedule": "step", "milestones": [30, 45]}, train={"eval_every": 15})
    for c in conds:
        for s in range(3):
            for arch in ("lenet5", "alexnet_cifar_w025"):
                runs.append((f"s/{c}/{arch}/{s}", merge(student, {"seed": s, "model": {"student": arch,
                             "teacher_checkpoint": f"{folder}/runs/t__{c}__{s}/last.pt"}}), 1))
    rows = run(runs, folder)
    for c in conds:
        accs = [rows[f"t/{c}/{s}"]["summary"]["last_acc"] for s in range(3)]
        eces = [ece_of(folder, f"t/{c}/{s}")[0] for s in range(3)]
        line = f"teacher {c:7s} acc {ms(accs)} ece {ms(eces)}"
        for arch in ("lenet5", "alexnet_cifar_w025"):
            a = [rows[f"s/{c}/{arch}/{s}"]["summary"]["last_acc"] for s in range(3)]
            e = [ece_of(folder, f"s/{c}/{arch}/{s}")[0] for s in range(3)]
            line += f" | {arch} acc {ms(a)} ece {ms(e)}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
