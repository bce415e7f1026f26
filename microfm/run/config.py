"""Where the configs are, the resolvers they use, and composing them outside the CLI."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf


def config_dir() -> Path:
    """The ``conf/`` folder: bundled in the wheel as ``microfm/conf``, or at the top of a source
    checkout (editable install)."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        f"microfm configs not found next to {here}: the installation is incomplete "
        "(expected microfm/conf/train.yaml or conf/train.yaml in the source tree)"
    )


def _length(value) -> int:
    if isinstance(value, (ListConfig, list, tuple)):
        return len(value)
    raise ValueError(f"microfm.len expects a list, got {value!r}")


def _length_or(value, default: int) -> int:
    """``len(value)``, or ``default`` when ``value`` is None (``data.in_chans`` from
    ``data.channels``)."""
    return int(default) if value is None else _length(value)


def _class_names(*, _parent_) -> list[str]:
    """Class names of a classification dataset, discovered from ``root``/``csv`` of the node
    that uses the resolver (``[]`` while ``root`` is unset or missing)."""
    from pathlib import Path

    if OmegaConf.is_missing(_parent_, "root") or _parent_.get("root") is None:
        return []
    from microfm.data.class_names import discover_class_names
    from microfm.errors import DataError

    try:  # problems with the data are reported, naming the file, when the data are built
        return discover_class_names(
            Path(str(_parent_.root)), _parent_.get("csv"), _parent_.get("label_column") or "label"
        )
    except DataError:
        return []


def _task_targets(names, specs) -> list[str]:
    """Derived targets of the chosen tasks of ``task=multitask`` (union, in order)."""
    out: list[str] = []
    for name in names:
        spec = specs.get(name) if name in specs else None
        for target in (spec.get("targets") or []) if spec is not None else []:
            if target not in out:
                out.append(str(target))
    return out


def register_resolvers() -> None:
    """Resolvers used inside microfm's configs (idempotent)."""
    from microfm.distributed.resolvers import register

    if not OmegaConf.has_resolver("microfm.len"):
        OmegaConf.register_new_resolver("microfm.len", _length)
    if not OmegaConf.has_resolver("microfm.len_or"):
        OmegaConf.register_new_resolver("microfm.len_or", _length_or)
    if not OmegaConf.has_resolver("microfm.class_names"):
        OmegaConf.register_new_resolver("microfm.class_names", _class_names)
    register()  # run stamp, job and rank suffixes, sweep group
    if not OmegaConf.has_resolver("microfm.task_targets"):
        OmegaConf.register_new_resolver("microfm.task_targets", _task_targets)


def compose(overrides: Sequence[str] = (), config_name: str = "train") -> DictConfig:
    """Compose a config like the CLI does (Hydra's compose API), e.g. for tests and notebooks.

    ``hydra.*`` interpolations in the result are resolved against the composed Hydra config.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


register_resolvers()
