"""Tasks: head + loss + metrics for one prediction target (plain torch)."""

from microfm.tasks.base import Task
from microfm.tasks.cellseg import CellSegTask
from microfm.tasks.classify import ClassifyTask
from microfm.tasks.depth import DepthTask
from microfm.tasks.semseg import SemSegTask

__all__ = ["CellSegTask", "ClassifyTask", "DepthTask", "SemSegTask", "Task"]
