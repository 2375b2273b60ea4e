"""Datasets as whole uint8 tensors, and an airbench-style loader that batches and augments them.

Example:
    >>> from poolkit.data import TensorLoader, load_dataset
    >>> data = load_dataset("mnist5k")
    >>> data.train
    ImageSplit(images=uint8[4000, 1, 32, 32], labels=int64[4000])
    >>> loader = TensorLoader(data.train, 256, train=True, mean=data.mean, std=data.std, flip=data.flip)
    >>> images, labels = next(loader.epoch(0))
    >>> images.shape, images.dtype, labels.shape
    (torch.Size([256, 1, 32, 32]), torch.float32, torch.Size([256]))
"""

from poolkit.data.augment import crop_at, flip_where, normalize, random_crop, random_flip
from poolkit.data.base import DatasetSplits, ImageSplit, channel_stats
from poolkit.data.loader import TensorLoader
from poolkit.data.registry import DatasetInfo, dataset_info, list_datasets, load_dataset

__all__ = [
    "DatasetInfo",
    "DatasetSplits",
    "ImageSplit",
    "TensorLoader",
    "channel_stats",
    "crop_at",
    "dataset_info",
    "flip_where",
    "list_datasets",
    "load_dataset",
    "normalize",
    "random_crop",
    "random_flip",
]
