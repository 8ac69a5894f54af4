"""Datasets held in memory, batched on-device augmentation and a device-resident loader."""

from mixdistill.data import readers
from mixdistill.data.datasets import DATASETS, DatasetSpec, Split, find_root, load_dataset
from mixdistill.data.loader import DeviceLoader
from mixdistill.data.transforms import normalize, random_crop_flip

__all__ = [
    "DATASETS",
    "DatasetSpec",
    "DeviceLoader",
    "Split",
    "find_root",
    "load_dataset",
    "normalize",
    "random_crop_flip",
    "readers",
]
