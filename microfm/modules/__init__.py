"""LightningModules (orchestration only; building blocks live in plain-torch packages)."""

from microfm.modules.optim import OptimConfig
from microfm.modules.supervised import SupervisedModule

__all__ = ["OptimConfig", "SupervisedModule"]
