"""Datasets and DataModules."""

from microfm.data.datamodule import MicroscopyDataModule
from microfm.data.dense import DenseDataset
from microfm.data.synthetic_datamodule import SyntheticDataModule

__all__ = ["DenseDataset", "MicroscopyDataModule", "SyntheticDataModule"]
