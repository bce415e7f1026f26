"""Datasets and DataModules: readers, validation and cache, layouts, downloads."""

from microfm.data.classification import ClassificationDataModule
from microfm.data.ctc import CTCDataModule
from microfm.data.datamodule import MicroscopyDataModule
from microfm.data.dense import DenseDataset
from microfm.data.file_datamodule import FileDataModule
from microfm.data.files import DomainBalancedDataset, FileDataset
from microfm.data.folder import FolderDataModule
from microfm.data.io import read_image, read_label
from microfm.data.livecell import LiveCellDataModule
from microfm.data.synthetic_datamodule import SyntheticDataModule
from microfm.data.unlabeled import UnlabeledDataModule

__all__ = [
    "CTCDataModule",
    "ClassificationDataModule",
    "DenseDataset",
    "DomainBalancedDataset",
    "FileDataModule",
    "FileDataset",
    "FolderDataModule",
    "LiveCellDataModule",
    "MicroscopyDataModule",
    "SyntheticDataModule",
    "UnlabeledDataModule",
    "read_image",
    "read_label",
]
