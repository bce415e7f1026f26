"""Config -> objects -> fit/test. No ``hydra.main`` here (see :mod:`microfm.cli`)."""

from microfm.run.config import compose, config_dir

__all__ = ["compose", "config_dir"]
