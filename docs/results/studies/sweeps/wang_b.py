# wang2022 sweep B: KD vs CE gate, KD+CutMix view vs KD, long vs short, two subset sizes; 3 seeds
import sys
sys.path.insert(0, "docs/results/studies/sweeps")
from harness import *

def main():
    folder = "runs/sweeps/wang_b"
    teacher = base(model={"student": "cnn5_w16"}, method={"name": "ce"},
                   optim={"lr": 0.1, "epochs": 3, "schedule": "onecycle", "milestones": []})
    runs = [("teacher", merge(teacher, {"seed": 0}), 0)]
    ckpt = f"{folder}/runs/teacher/last.pt"
    methods = {"ce": {"method": {"name": "ce"}}, "kd": {"method": {"name": "kd"}},
               "kd_cutmix": {"method": {"name": "kd_view"}, "augment": {"name": "cutmix"}}}
    for n, epochs in ((1000, 64), (3000, 45)):
        for long in (1, 2):
            for m, e in methods.items():
                for s in range(3):
                    tree = base(data={"train_subset": n}, model={"student": "cnn5_w8", "teacher_checkpoint": ckpt},
                                optim={"lr": 0.1, "epochs": epochs, "epoch_factor": long, "schedule": "onecycle",
                                       "milestones": []}, train={"eval_every": epochs * long // 4})
                    runs.append((f"s/{n}/{long}/{m}/{s}", merge(merge(tree, e), {"seed": s, "augment": e.get("augment", {"name": "none"})}), 1))
    rows = run(runs, folder)
    import statistics
    for n in (1000, 3000):
        for long in (1, 2):
            res = {m: [rows[f"s/{n}/{long}/{m}/{s}"]["summary"]["last_acc"] for s in range(3)] for m in methods}
            d1 = [a - b for a, b in zip(res["kd"], res["ce"])]
            d2 = [a - b for a, b in zip(res["kd_cutmix"], res["kd"])]
            print(f"n={n} x{long}: " + ", ".join(f"{m} {ms(v)}" for m, v in res.items())
                  + f" | KD-CE {[round(x,2) for x in d1]} | KDcutmix-KD {[round(x,2) for x in d2]}", flush=True)


if __name__ == "__main__":
    main()
