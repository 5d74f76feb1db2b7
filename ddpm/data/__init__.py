"""Datasets: in-memory uint8 tensors, or streamed from files when too large (`ddpm.data.streaming`: training batches,
`open_split` for commands that read a split); the pixel scaling the models train on."""

from ddpm.data.datasets import DATASETS, ImageData, load_dataset
from ddpm.data.scaling import from_model_range, to_model_range
from ddpm.data.streaming import SplitImages, open_split

__all__ = ["DATASETS", "ImageData", "SplitImages", "load_dataset", "open_split", "to_model_range", "from_model_range"]
