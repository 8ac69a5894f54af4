"""Top-1, top-5 and cross-entropy of a model's (or a method's named) outputs over a loader, in one pass, with the
run's precision and layout. Top-5 is computed for outputs with at least 5 classes (``None`` below that). On a CPU a
batch is forwarded in chunks (``models.inference``); the metrics are summed per loader batch as before."""

from __future__ import annotations

import torch
from torch import nn

from mixdistill.data import DeviceLoader
from mixdistill.engine.runtime import Runtime
from mixdistill.models.inference import forward_in_chunks


@torch.no_grad()
def evaluate_many(module: nn.Module, forward, loader: DeviceLoader, runtime: Runtime) -> dict[str, dict]:
    """Top-1, top-5 (outputs of at least 5 classes, else None) and mean CE of every named output of
    ``forward(images) -> {name: logits}`` in one pass: ``{name: {"acc", "top5", "loss"}}``, accuracies in %."""
    was_training = module.training
    module.eval()
    correct: dict[str, torch.Tensor] = {}
    correct5: dict[str, torch.Tensor | None] = {}
    loss_sum: dict[str, torch.Tensor] = {}
    count = 0
    with torch.inference_mode():
        for images, labels in loader:
            if runtime.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with runtime.autocast():
                outputs = forward_in_chunks(forward, images)
            for name, logits in outputs.items():
                logits = logits.float()
                loss_sum[name] = loss_sum.get(name, 0) + nn.functional.cross_entropy(logits, labels, reduction="sum")
                correct[name] = correct.get(name, 0) + (logits.argmax(1) == labels).sum()
                if logits.shape[1] >= 5:
                    top5 = (logits.topk(5, dim=1).indices == labels[:, None]).any(1).sum()
                    correct5[name] = correct5.get(name, 0) + top5
                else:
                    correct5[name] = None
            count += labels.numel()
    module.train(was_training)
    return {name: {"acc": 100.0 * correct[name].item() / count,
                   "top5": None if correct5[name] is None else 100.0 * correct5[name].item() / count,
                   "loss": loss_sum[name].item() / count}
            for name in correct}


def evaluate(model: nn.Module, loader: DeviceLoader, runtime: Runtime) -> dict:
    return evaluate_many(model, lambda x: {"model": model(x)}, loader, runtime)["model"]


def eval_record(results: dict[str, dict]) -> dict:
    """Per-epoch test metrics. One output: test_acc/test_loss (and test_top5 with at least 5 classes). Peers
    (online methods): every peer, the ensemble, best and mean peer; test_acc (test_top5, test_loss) is then the
    mean over the peers."""
    if set(results) == {"student"}:
        r = results["student"]
        record = {"test_acc": r["acc"], "test_loss": r["loss"]}
        if r.get("top5") is not None:
            record["test_top5"] = r["top5"]
        return record
    record = {}
    for name, r in results.items():
        record[f"test_acc_{name}"], record[f"test_loss_{name}"] = r["acc"], r["loss"]
        if r.get("top5") is not None:
            record[f"test_top5_{name}"] = r["top5"]
    peers = [r for name, r in results.items() if name.startswith("peer")]
    if peers:
        record["test_acc_best_peer"] = max(r["acc"] for r in peers)
        record["test_acc_mean_peer"] = sum(r["acc"] for r in peers) / len(peers)
        record["test_acc"] = record["test_acc_mean_peer"]
        record["test_loss"] = sum(r["loss"] for r in peers) / len(peers)
        if all(r.get("top5") is not None for r in peers):
            record["test_top5"] = sum(r["top5"] for r in peers) / len(peers)
    return record
