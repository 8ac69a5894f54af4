"""Forwards over many images in chunks (models.inference): the same outputs as one forward, in chunks no larger
than asked, whatever the forward returns; evaluation and the report's test logits go through it."""

import pytest
import torch

from mixdistill.data import DeviceLoader
from mixdistill.engine.evaluate import evaluate_many
from mixdistill.engine.runtime import resolve_runtime
from mixdistill.models import create_model
from mixdistill.models import inference
from mixdistill.models.inference import forward_in_chunks


def _net():
    torch.manual_seed(0)
    net = create_model("cnn5_w8", num_classes=10, in_channels=1).eval()
    for m in net.modules():  # BatchNorm statistics other than the identity, so that they matter
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return net


def test_chunks_are_no_larger_than_asked_and_join_every_kind_of_output():
    net, seen = _net(), []
    images = torch.randn(300, 1, 28, 28)

    def features(x):
        seen.append(len(x))
        logits, feats = net.forward_features(x)
        return logits, {"pooled": feats["pooled"], "maps": feats["maps"]}

    with torch.inference_mode():
        whole_logits, whole = net.forward_features(images)
        logits, parts = forward_in_chunks(features, images, chunk=128)
    assert seen == [128, 128, 44]
    torch.testing.assert_close(logits, whole_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(parts["pooled"], whole["pooled"], rtol=1e-5, atol=1e-5)
    assert isinstance(parts["maps"], list) and len(parts["maps"]) == len(whole["maps"])
    for a, b in zip(parts["maps"], whole["maps"]):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="cannot join"):
        forward_in_chunks(lambda x: len(x), images, chunk=100)


def test_a_cpu_batch_is_chunked_by_default_and_other_devices_run_it_whole():
    seen = []

    def forward(x):
        seen.append(len(x))
        return x.sum(dim=(1, 2, 3))

    forward_in_chunks(forward, torch.zeros(inference.CPU_CHUNK * 2 + 1, 1, 2, 2))
    assert seen == [inference.CPU_CHUNK, inference.CPU_CHUNK, 1]
    seen.clear()
    forward_in_chunks(forward, torch.zeros(inference.CPU_CHUNK * 2 + 1, 1, 2, 2, device="meta"))
    assert seen == [inference.CPU_CHUNK * 2 + 1]


def test_evaluation_in_chunks_gives_the_metrics_of_whole_batches(monkeypatch):
    net = _net()
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (500, 1, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (500,), generator=g)
    loader = DeviceLoader(images, labels, batch_size=250, mean=(0.5,), std=(0.25,), shuffle=False, drop_last=False)
    runtime = resolve_runtime("cpu", "fp32", False, False)  # pinned: the comparison is of fp32 sums
    seen = []

    def forward(x):
        seen.append(len(x))
        return {"student": net(x)}

    monkeypatch.setattr(inference, "CPU_CHUNK", 1000)
    whole = evaluate_many(net, forward, loader, runtime)["student"]
    assert seen == [250, 250]
    seen.clear()
    monkeypatch.setattr(inference, "CPU_CHUNK", 100)
    chunked = evaluate_many(net, forward, loader, runtime)["student"]
    assert seen == [100, 100, 50] * 2
    assert chunked["acc"] == whole["acc"] and chunked["top5"] == whole["top5"]
    assert chunked["loss"] == pytest.approx(whole["loss"], rel=1e-6)
