"""LightningModules (orchestration only; building blocks live in plain-torch packages)."""

from microfm.modules.dino import DINOModule
from microfm.modules.mae import MAEModule
from microfm.modules.optim import OptimConfig
from microfm.modules.supervised import SupervisedModule

__all__ = ["DINOModule", "MAEModule", "OptimConfig", "SupervisedModule"]
