# choi2023 sweep D: vanilla vs mixup teachers (smoothness), KD vs CE, Mix-S T4 vs T1; 3 teacher replicates
import sys, statistics
sys.path.insert(0, "docs/results/studies/sweeps")
from harness import *
import torch

def main():
    folder = "runs/sweeps/choi_d"
    teacher = base(data={"train_subset": 15000}, model={"student": "cnn5_w16"}, method={"name": "ce"},
                   optim={"lr": 0.1, "epochs": 8, "schedule": "onecycle", "milestones": []})
    conds = {"vanilla": {"augment": {"name": "none"}}, "mixup": {"augment": {"name": "mixup_two_perm", "alpha": 1.0}}}
    runs = [(f"t/{c}/{r}", merge(merge(teacher, e), {"seed": r}), 0) for c, e in conds.items() for r in range(3)]
    student = base(data={"train_subset": 3000}, model={"student": "cnn5_w8"},
                   optim={"lr": 0.1, "epochs": 45, "schedule": "onecycle", "milestones": []}, train={"eval_every": 45})
    jobs = {"ce": ("vanilla", {"method": {"name": "ce"}}), "kd": ("vanilla", {"method": {"name": "kd"}}),
            "mixs_T4": ("mixup", {"method": {"name": "mix_kd", "temperature": 4.0}, "augment": {"name": "mixup_two_perm"}}),
            "mixs_T1": ("mixup", {"method": {"name": "mix_kd", "temperature": 1.0}, "augment": {"name": "mixup_two_perm"}})}
    for j, (c, e) in jobs.items():
        for r in range(3):
            tree = merge(merge(student, e), {"seed": r, "model": {"teacher_checkpoint": f"{folder}/runs/t__{c}__{r}/last.pt"}})
            if j == "ce":
                tree["model"].pop("teacher_checkpoint")
            runs.append((f"s/{j}/{r}", tree, 1))
    rows = run(runs, folder)
    for c in conds:
        accs, stds, ents, eces = [], [], [], []
        for r in range(3):
            ece, probs = ece_of(folder, f"t/{c}/{r}")
            accs.append(rows[f"t/{c}/{r}"]["summary"]["last_acc"]); eces.append(ece)
            ents.append(float(-(probs.clamp_min(1e-12).log() * probs).sum(1).mean()))
        print(f"teacher {c}: acc {ms(accs)} ece {ms(eces)} entropy {ms(ents)}", flush=True)
    for j in jobs:
        print(f"{j}: {ms([rows[f's/{j}/{r}']['summary']['last_acc'] for r in range(3)])} "
              f"{[round(rows[f's/{j}/{r}']['summary']['last_acc'], 2) for r in range(3)]}", flush=True)


if __name__ == "__main__":
    main()
