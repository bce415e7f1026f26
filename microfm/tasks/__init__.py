"""Tasks: head + loss + metrics for one prediction target (plain torch)."""

from microfm.tasks.base import Task
from microfm.tasks.cellseg import CellSegTask

__all__ = ["CellSegTask", "Task"]
