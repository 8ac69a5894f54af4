"""LeNet-5 and the CIFAR AlexNet of das2020.

Follows deepandas11/Distilling-with-VRM (Das et al., "Distilling with VRM",
ICML-UDL 2020) ``models/lenet.py`` and ``models/alexnet.py``; module and
state_dict key names are the same as there (conv1/conv2/fc1-3; features.*,
fc_layers.*).  Differences, all parameter-free, so that 28x28 inputs also work:
LeNet's second max-pool is an adaptive max-pool to 5x5 and AlexNet's last
max-pool an adaptive max-pool to 4x4 -- both identical to the original pools
at 32x32; ``in_channels`` sets the first conv's input channels.

Both run each max-pool before the ReLU that comes before it in the released code (AlexNet keeps the
released module order in ``features`` and runs each ReLU, max-pool pair pool first): ReLU is monotone, so
the two orders give the same values and gradients bit for bit, and the ReLU then touches only the pooled
elements (see ``models/cnn.py``: also why ``torch.compile`` traces the released order; ``relu_after_pool =
False`` restores it everywhere). The recorded maps come after both, as before.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ._base import ZooModel, pools_before_relu, record


def _relu_and_pool(x, pool, pool_first: bool):
    return F.relu(pool(x)) if pool_first else pool(F.relu(x))


class LeNet5(ZooModel):
    """conv(6, 5x5) - pool - conv(16, 5x5) - pool - fc120 - fc84 - fc."""

    relu_after_pool = True  # see the module docstring

    def __init__(self, num_classes: int = 100, in_channels: int = 3):
        super().__init__()
        self.num_classes = num_classes
        self.feature_dim = 84
        self.conv1 = nn.Conv2d(in_channels, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)
        self.pool1 = nn.MaxPool2d(2)  # a module (no parameters), so that the trainer can give it engine/small_pool

    def get_classifier(self) -> nn.Module:
        return self.fc3

    def _body(self, x, maps):
        pool_first = pools_before_relu(self)
        x = _relu_and_pool(self.conv1(x), self.pool1, pool_first)
        record(maps, x)
        x = _relu_and_pool(self.conv2(x), lambda t: F.adaptive_max_pool2d(t, 5), pool_first)
        record(maps, x)
        x = F.relu(self.fc1(x.flatten(1)))
        return F.relu(self.fc2(x))


_MAX_POOLS = (nn.MaxPool2d, nn.AdaptiveMaxPool2d)


class AlexNetCifar(ZooModel):
    """Five convs (64-192-384-256-256), then FC 4096-2048-2048 with dropout. ``width`` scales every
    conv and hidden FC width (1.0: das2020's network; 0.25: the CPU-scale AlexNet-style student)."""

    _STAGE_ENDS = (2, 5, 12)  # positions in the run of ``features`` after which a map is recorded
    relu_after_pool = True  # see the module docstring

    def __init__(self, num_classes: int = 100, in_channels: int = 3, width: float = 1.0):
        super().__init__()
        c1, c2, c3, c4, c5, hidden = (max(1, round(c * width)) for c in (64, 192, 384, 256, 256, 2048))
        self.num_classes = num_classes
        self.feature_dim = hidden
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, kernel_size=3, stride=1, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=2),
            nn.Conv2d(c1, c2, kernel_size=3, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=2),
            nn.Conv2d(c2, c3, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c3, c4, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c4, c5, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.AdaptiveMaxPool2d(4),  # original: MaxPool2d(3, stride=2), the same on 9x9 maps
        )
        self.fc_layers = nn.Sequential(
            nn.Dropout(),
            nn.Linear(c5 * 4 * 4, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(0.6),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def get_classifier(self) -> nn.Module:
        return self.fc_layers[6]

    def _run_order(self) -> list[int]:
        """Indices of ``features`` in the order they run: each (ReLU, max-pool) pair pool first."""
        order = list(range(len(self.features)))
        if pools_before_relu(self):
            for i in range(len(order) - 1):
                if isinstance(self.features[i], nn.ReLU) and isinstance(self.features[i + 1], _MAX_POOLS):
                    order[i], order[i + 1] = i + 1, i
        return order

    def _body(self, x, maps):
        for position, i in enumerate(self._run_order()):
            x = self.features[i](x)
            if position in self._STAGE_ENDS:
                record(maps, x)
        x = x.flatten(1)
        for i in range(6):
            x = self.fc_layers[i](x)
        return x


def lenet5(num_classes=100, in_channels=3):
    return LeNet5(num_classes, in_channels)


def alexnet_cifar(num_classes=100, in_channels=3):
    return AlexNetCifar(num_classes, in_channels)


def alexnet_cifar_w025(num_classes=100, in_channels=3):
    """A quarter-width AlexNet with Kaiming-normal init: with PyTorch's default init this BN-free net
    sits at chance for the first few epochs, longer than a CPU-scale run lasts."""
    model = AlexNetCifar(num_classes, in_channels, width=0.25)
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            nn.init.zeros_(module.bias)
    return model
