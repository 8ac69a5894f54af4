# shen2022 sweep C: online KD gain over a network alone, 2 peers, 1k images, no crop/flip; 3 seeds
import sys
sys.path.insert(0, "docs/results/studies/sweeps")
from harness import *

def main():
    folder = "runs/sweeps/shen_c"
    methods = {"ce": {"method": {"name": "ce"}}, "dml": {"method": {"name": "dml", "peers": 2}},
               "kdcl": {"method": {"name": "kdcl", "peers": 2}}, "one": {"method": {"name": "one", "peers": 2}},
               "online_cutmix": {"method": {"name": "online_cutmix", "peers": 2}},
               "cutnmix": {"method": {"name": "cutnmix", "peers": 2, "ramp_epochs": 16}}}
    runs = []
    for m, e in methods.items():
        for s in range(3):
            tree = base(data={"train_subset": 1000, "crop_padding": 0, "flip": False, "batch_size": 64},
                        model={"student": "cnn5_w16"}, optim={"lr": 0.05, "epochs": 60, "schedule": "onecycle", "milestones": []},
                        train={"eval_every": 15})
            runs.append((f"{m}/{s}", merge(merge(tree, e), {"seed": s}), 0))
    rows = run(runs, folder)
    ce = [rows[f"ce/{s}"]["summary"]["last_acc"] for s in range(3)]
    for m in methods:
        r = [rows[f"{m}/{s}"]["summary"] for s in range(3)]
        mean = [x.get("last_acc_mean_peer", x["last_acc"]) for x in r]
        ens = [x.get("last_acc_ensemble") for x in r]
        print(f"{m:14s} mean peer {ms(mean)} ensemble {ms(ens)} | vs alone {[round(a - b, 2) for a, b in zip(mean, ce)]}", flush=True)


if __name__ == "__main__":
    main()
