"""The online-distillation benchmark's nets (okd_resnet110, wrn_20_8, okd_vgg16): OKDDip's released CIFAR ResNet
(assembled here from torchvision's Bottleneck, the block that file uses) and VGG-16 (written out here as that file
builds it) give the same keys, shapes and floats."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock as TorchvisionBasicBlock
from torchvision.models.resnet import Bottleneck as TorchvisionBottleneck

from mixdistill.models import count_parameters, create_model, load_weights
from mixdistill.online.branches import split_trunk_branch
from mixdistill.registry import METHODS


def synth_state(entries, seed=0):
    """Well-scaled random weights and BN statistics for every (key, shape)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in entries:
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(0)
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(shape, generator=g)
        elif len(shape) >= 2:
            state[key] = torch.randn(shape, generator=g) / (torch.tensor(shape[1:]).prod().float().sqrt())
        elif key.endswith("weight"):
            state[key] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            state[key] = 0.1 * torch.randn(shape, generator=g)
    return state


class OKDDipResNet(nn.Module):
    """OKDDip's models/model_cifar/resnet.py ``ResNet`` (plain forward, no KD output), built in its own order."""

    def __init__(self, block, layers, width_per_group, num_classes):
        super().__init__()
        self.inplanes = 16
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._stage(block, 16, layers[0], 1, width_per_group)
        self.layer2 = self._stage(block, 32, layers[1], 2, width_per_group)
        self.layer3 = self._stage(block, 64, layers[2], 2, width_per_group)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(64 * block.expansion, num_classes)

    def _stage(self, block, planes, blocks, stride, width_per_group):
        out_channels = planes * block.expansion
        downsample = None
        if stride != 1 or self.inplanes != out_channels:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, out_channels, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(out_channels))
        out = [block(self.inplanes, planes, stride, downsample, base_width=width_per_group)]
        self.inplanes = out_channels
        out += [block(self.inplanes, planes, base_width=width_per_group) for _ in range(1, blocks)]
        return nn.Sequential(*out)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).view(x.size(0), -1))


class OKDDipVGG16(nn.Module):
    """OKDDip's models/model_cifar/vgg.py ``VGG(depth=16)``: floor-mode pools, the 1x1 map flattened by ``view``."""

    def __init__(self, num_classes):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 3, padding=1), nn.BatchNorm2d(64)
        self.conv2, self.bn2 = nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64)
        self.relu, self.maxpool = nn.ReLU(True), nn.MaxPool2d(2, 2)
        cin = 64
        for i, (width, convs) in enumerate(((128, 2), (256, 3), (512, 3), (512, 3)), start=1):
            layers = []
            for _ in range(convs):
                layers += [nn.Conv2d(cin, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
                cin = width
            setattr(self, f"layer{i}", nn.Sequential(*layers, nn.MaxPool2d(2, 2)))
        self.classifier = nn.Sequential(nn.Linear(512, 512), nn.ReLU(True), nn.Dropout(0.0), nn.Linear(512, 512),
                                        nn.ReLU(True), nn.Dropout(0.0), nn.Linear(512, num_classes))

    def forward(self, x):
        x = self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.maxpool(x)))))
        return self.classifier(x.view(x.size(0), -1))


def test_the_released_vgg16_loads_strictly_and_gives_the_same_floats(tmp_path):
    ref, ours = OKDDipVGG16(num_classes=100), create_model("okd_vgg16", num_classes=100)
    entries = [(k, tuple(v.shape)) for k, v in ref.state_dict().items()]
    assert [(k, tuple(v.shape)) for k, v in ours.state_dict().items()] == entries
    state = synth_state(entries)
    ref.load_state_dict(state)
    torch.save({"state_dict": state}, tmp_path / "released.pth")
    load_weights(ours, tmp_path / "released.pth", strict=True)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for mode in (False, True):
        ref.train(mode), ours.train(mode)
        with torch.no_grad():
            logits, feats = ours.forward_features(x)
            torch.testing.assert_close(logits, ref(x), rtol=0, atol=0)
        assert feats["pooled"].shape == (2, 512) and [m.shape[-1] for m in feats["maps"]] == [32, 8, 4, 2, 1]


RELEASED = {"okd_resnet110": ([12, 12, 12], 64), "wrn_20_8": ([2, 2, 2], 64 * 8)}  # Bottleneck nets
BLOCK = {"okd_resnet110": TorchvisionBottleneck, "wrn_20_8": TorchvisionBottleneck,
         "resnet32": TorchvisionBasicBlock}  # OKDDip's resnet32 is RepDistiller's net: the zoo's resnet32


@pytest.mark.parametrize("name", sorted(BLOCK))
def test_the_released_resnets_load_strictly_and_give_the_same_floats(name, tmp_path):
    layers, width = RELEASED.get(name, ([5, 5, 5], 64))
    ref = OKDDipResNet(BLOCK[name], layers, width, num_classes=100)
    ours = create_model(name, num_classes=100)
    entries = [(k, tuple(v.shape)) for k, v in ref.state_dict().items()]
    assert [(k, tuple(v.shape)) for k, v in ours.state_dict().items()] == entries
    expansion = BLOCK[name].expansion
    assert ours.feature_dim == 64 * expansion and count_parameters(ours) == count_parameters(ref)
    state = synth_state(entries)
    ref.load_state_dict(state)
    torch.save({"state_dict": state}, tmp_path / "released.pth")  # the released scripts' checkpoint form
    load_weights(ours, tmp_path / "released.pth", strict=True)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for mode in (False, True):  # eval: running stats; train: batch stats
        ref.train(mode), ours.train(mode)
        with torch.no_grad():
            logits, feats = ours.forward_features(x)
            torch.testing.assert_close(logits, ref(x), rtol=0, atol=0)
        assert [tuple(m.shape) for m in feats["maps"]] == [(2, 16, 32, 32), (2, 16 * expansion, 32, 32),
                                                            (2, 32 * expansion, 16, 16), (2, 64 * expansion, 8, 8)]


def test_the_parameter_counts_are_the_blocks_sums():
    def bottleneck(cin, planes, width, down):  # conv1x1, BN, conv3x3, BN, conv1x1, BN (+ 1x1 conv, BN shortcut)
        w, out = planes * width // 64, planes * 4
        n = cin * w + 2 * w + 9 * w * w + 2 * w + w * out + 2 * out
        return n + (cin * out + 2 * out if down else 0)

    for name, (layers, width) in RELEASED.items():
        total, cin = 3 * 9 * 16 + 2 * 16, 16
        for planes, blocks in zip((16, 32, 64), layers):
            for i in range(blocks):
                total += bottleneck(cin, planes, width, i == 0)
                cin = planes * 4
        total += 256 * 100 + 100
        assert count_parameters(create_model(name, num_classes=100)) == total
    assert count_parameters(create_model("wrn_20_8", num_classes=100)) / 1e6 == pytest.approx(6.87, abs=0.01)


@pytest.mark.parametrize("name", ["wrn_20_8", "resnet20"])
def test_a_blocks_preact_is_its_output_before_the_relu(name):
    model = create_model(name, num_classes=10).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        h = model.relu(model.bn1(model.conv1(x)))
        for block in model.layer1:
            torch.testing.assert_close(F.relu(block.preact(h)), block(h), rtol=0, atol=0)
            h = block(h)


def test_one_branches_a_bottleneck_resnet_at_its_last_stage():
    trunk, branch, channels = split_trunk_branch(create_model("wrn_20_8", num_classes=10))
    assert channels == 128
    with torch.no_grad():
        h = trunk(torch.randn(2, 3, 16, 16))
        assert h.shape[1] == channels and branch(h).shape == (2, 256)


def test_one_branches_okd_vgg16_at_layer4_with_the_released_dropout():
    """OKDDip's vgg_one.py: conv1..layer3 shared, layer4 + classifier per branch, classifier dropouts p = 0.5."""
    cls = METHODS["one"]
    d = cls.from_names(["okd_vgg16"] * 3, cls.Params(), num_classes=10, in_channels=3)
    assert d.gate[0].in_features == 512 and len({id(p.branch) for p in d.peers}) == 3
    assert all(m.p == 0.5 for p in d.peers for m in p.fc if isinstance(m, nn.Dropout))
    assert all(m.p == 0.0 for m in create_model("okd_vgg16").classifier if isinstance(m, nn.Dropout))
    d.eval()
    x = torch.randn(2, 3, 32, 32)
    standalone = create_model("okd_vgg16", num_classes=10).eval()
    standalone.load_state_dict(d.student.state_dict())  # the checkpoint's model: trunk + branch 0
    with torch.no_grad():
        torch.testing.assert_close(standalone(x), d.evaluation_logits(x)["peer0"], rtol=0, atol=0)
