"""Top-1 and cross-entropy of a model's (or a method's named) outputs over a loader, in one pass, with the
run's precision and layout."""

from __future__ import annotations

import torch
from torch import nn

from mixdistill.data import DeviceLoader
from mixdistill.engine.runtime import Runtime


@torch.no_grad()
def evaluate_many(module: nn.Module, forward, loader: DeviceLoader, runtime: Runtime) -> dict[str, dict]:
    """Top-1 and mean CE of every named output of ``forward(images) -> {name: logits}`` in one pass."""
    was_training = module.training
    module.eval()
    correct: dict[str, torch.Tensor] = {}
    loss_sum: dict[str, torch.Tensor] = {}
    count = 0
    with torch.inference_mode():
        for images, labels in loader:
            if runtime.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with runtime.autocast():
                outputs = forward(images)
            for name, logits in outputs.items():
                logits = logits.float()
                loss_sum[name] = loss_sum.get(name, 0) + nn.functional.cross_entropy(logits, labels, reduction="sum")
                correct[name] = correct.get(name, 0) + (logits.argmax(1) == labels).sum()
            count += labels.numel()
    module.train(was_training)
    return {name: {"acc": 100.0 * correct[name].item() / count, "loss": loss_sum[name].item() / count}
            for name in correct}


def evaluate(model: nn.Module, loader: DeviceLoader, runtime: Runtime) -> dict:
    return evaluate_many(model, lambda x: {"model": model(x)}, loader, runtime)["model"]


def eval_record(results: dict[str, dict]) -> dict:
    """Per-epoch test metrics. One output: test_acc/test_loss. Peers (online methods): every peer, the
    ensemble, best and mean peer; test_acc is then the mean peer accuracy."""
    if set(results) == {"student"}:
        return {"test_acc": results["student"]["acc"], "test_loss": results["student"]["loss"]}
    record = {}
    for name, r in results.items():
        record[f"test_acc_{name}"], record[f"test_loss_{name}"] = r["acc"], r["loss"]
    peers = [r for name, r in results.items() if name.startswith("peer")]
    if peers:
        record["test_acc_best_peer"] = max(r["acc"] for r in peers)
        record["test_acc_mean_peer"] = sum(r["acc"] for r in peers) / len(peers)
        record["test_acc"] = record["test_acc_mean_peer"]
        record["test_loss"] = sum(r["loss"] for r in peers) / len(peers)
    return record
