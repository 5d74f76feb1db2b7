"""Datasets: in-memory uint8 tensors, or streamed from files when too large (`ddpm.data.streaming`); the pixel scaling the models train on."""

from ddpm.data.datasets import DATASETS, ImageData, load_dataset
from ddpm.data.scaling import from_model_range, to_model_range

__all__ = ["DATASETS", "ImageData", "load_dataset", "to_model_range", "from_model_range"]
