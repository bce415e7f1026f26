"""Config -> objects. Errors name the config key at fault."""

from __future__ import annotations

import difflib
import importlib
import inspect
import logging
import re
from collections.abc import Mapping
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from microfm.errors import ConfigError, MicrofmError

log = logging.getLogger(__name__)

_UNEXPECTED = re.compile(r"unexpected keyword argument '(\w+)'")
_FULL_KEY = re.compile(r"full_key: ([\w.]+)")


def _target_params(node: DictConfig) -> list[str]:
    target = node.get("_target_")
    if not target:
        return []
    module, _, name = str(target).rpartition(".")
    try:
        obj = getattr(importlib.import_module(module), name)
        return [p for p in inspect.signature(obj).parameters if p not in ("self", "args", "kwargs")]
    except (ImportError, AttributeError, TypeError, ValueError):
        return []


def build(node: DictConfig | None, key: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` with user-facing errors.

    A microfm error raised by the constructor is re-raised as is; an unknown argument becomes
    a :class:`ConfigError` naming ``<key>.<argument>`` with the closest valid names.
    """
    if node is None:
        return None
    try:
        return instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as exc:
        cause: BaseException | None = exc
        while cause is not None:
            if isinstance(cause, MicrofmError):
                raise cause from None
            cause = cause.__cause__
        match = _UNEXPECTED.search(str(exc))
        if match:
            bad = match.group(1)
            # the failing node may be nested (task.head); Hydra reports its key relative to node
            full = _FULL_KEY.search(str(exc))
            sub = full.group(1) if full else ""
            sub = sub[len(key) + 1 :] if sub.startswith(f"{key}.") else ("" if sub == key else sub)
            where = OmegaConf.select(node, sub) if sub else node
            if not isinstance(where, DictConfig):
                where, sub = node, ""
            path = f"{key}.{sub}" if sub else key
            close = difflib.get_close_matches(bad, _target_params(where), n=3)
            hint = f" Did you mean {', '.join(f'{path}.{c}' for c in close)}?" if close else ""
            raise ConfigError(
                f"{path}.{bad} is not a parameter of {where.get('_target_')}.{hint}"
            ) from None
        raise ConfigError(f"cannot build `{key}` from the config: {exc}") from exc


def on_gpu(accelerator: str) -> bool:
    import torch  # here, not at import: composing configs and cache hits stay torch-free

    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def resolve_precision(precision: Any, accelerator: str) -> Any:
    """``auto``: bf16 mixed precision on GPUs that support it (fp16 mixed on older ones),
    full fp32 on CPU, where bf16 autocast is about three times slower."""
    if precision != "auto":
        return precision
    if on_gpu(accelerator):
        import torch

        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def resolve_deterministic(value: Any, accelerator: str) -> Any:
    """``auto``: deterministic algorithms on CPU (same command, same metrics); off on GPU,
    where several upsampling backward kernels have no deterministic implementation."""
    if value != "auto":
        return value
    return not on_gpu(accelerator)


def build_trainer(cfg: DictConfig, callbacks: list, logger: Any, plugins: list):
    tcfg = cfg.trainer
    accelerator = str(tcfg.get("accelerator", "auto"))
    precision = resolve_precision(tcfg.get("precision", "auto"), accelerator)
    deterministic = resolve_deterministic(tcfg.get("deterministic", "auto"), accelerator)
    log.info(
        "trainer: accelerator=%s precision=%s deterministic=%s",
        accelerator,
        precision,
        deterministic,
    )
    return build(
        tcfg,
        "trainer",
        precision=precision,
        deterministic=deterministic,
        callbacks=callbacks,
        logger=logger if logger is not None else False,
        plugins=plugins,
        use_distributed_sampler=False,  # microfm's SeededSampler shards across ranks itself
    )


def build_callbacks(cfg: DictConfig) -> list:
    callbacks = []
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is not None:
            callbacks.append(build(node, f"callbacks.{name}"))
    return callbacks


def check_settings(cfg: DictConfig) -> None:
    """Impossible settings that would only fail after minutes of setup: fail now."""
    if OmegaConf.is_missing(cfg.data, "root"):
        raise ConfigError(
            "data.root is not set: give the dataset location, e.g. data.root=/path/to/dataset"
        )
    patch = cfg.backbone.get("patch_size")
    snapped = cfg.backbone.get("patch_multiple") is not None
    for key in ("image_size", "crop_size"):
        size = cfg.data.get(key)
        if patch and not snapped and size is not None and int(size) % int(patch):
            fit = int(size) // int(patch) * int(patch) or int(patch)
            raise ConfigError(
                f"data.{key}={size} is not a multiple of backbone.patch_size={patch} "
                f"({cfg.backbone.name}); use e.g. data.{key}={fit}, or let the backbone snap "
                "inputs with backbone.patch_multiple=resize|pad"
            )
    weights = cfg.backbone.get("weights")
    if weights and not (
        str(weights) == "official" or str(weights).startswith(("http://", "https://"))
    ):
        from pathlib import Path

        if not Path(str(weights)).expanduser().is_file():
            raise ConfigError(f"backbone.weights: file not found: {weights}")


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, Mapping)
    return dict(container)
