"""Finding, reading and loading backbone weights.

Resolution order (:func:`resolve_weights`): ``backbone.weights`` (a path, ``official``, a URL,
downloaded once into a cache and checked against its hash, or ``hf-hub:ORG/NAME[@REVISION]``
from the Hugging Face cache) -> the directory named by ``$MICROFM_WEIGHTS`` -> torch hub's
checkpoint cache and the Hugging Face cache (timm weights, the snapshot of its ``main`` ref)
-> nothing (random initialisation, decided by the caller). Nothing touches the network unless a
URL (or ``official``) is given and the file is not cached yet; gated weights (DINOv3) are never
downloaded.

Reading never executes code: safetensors, or ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import re
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from microfm.backbones.formats import convert
from microfm.backbones.registry import BackboneSpec
from microfm.errors import DataError, WeightsError

log = logging.getLogger(__name__)

# Keys under which training frameworks nest the model state dict.
_CONTAINER_KEYS = ("state_dict", "model", "model_ema", "module")
WEIGHTS_ENV = "MICROFM_WEIGHTS"
CACHE_ENV = "MICROFM_CACHE"
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[a-z]+$")


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint without executing code.

    Returns:
        ``(tensors, meta)``: the flat dict of tensors (unwrapped from ``model``/``state_dict``
        containers, keeping ``teacher``/``student`` prefixes so the encoder can be chosen) and
        microfm's metadata (``checkpoint["microfm"]``, empty for other checkpoints).

    Raises:
        WeightsError: the file is missing, unsafe to unpickle or holds no tensors.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"backbone.weights: no such file: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path)), {}
        except Exception as exc:
            raise WeightsError(
                f"backbone.weights: {path} is not a readable safetensors file: {exc}"
            ) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=_zipfile(path))
    except Exception as exc:  # pickle.UnpicklingError and friends
        raise WeightsError(
            f"backbone.weights: {path} cannot be loaded safely (weights_only=True): {exc}. "
            "microfm never unpickles code from a checkpoint; re-save it as a plain state dict "
            "or safetensors"
        ) from exc
    meta = obj.get("microfm", {}) if isinstance(obj, dict) else {}
    return flatten_tensors(obj, path), meta if isinstance(meta, dict) else {}


def _zipfile(path: Path) -> bool:
    """torch's zip format can be memory-mapped (large checkpoints load lazily)."""
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def flatten_tensors(obj: object, path: str | os.PathLike = "<memory>") -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint as one flat dict: a tensor dict as is; otherwise the first
    container key holding tensors (``state_dict``, ``model``...), or nested dicts (``teacher``,
    ``student``) joined with dots."""
    if isinstance(obj, dict):
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        for key in _CONTAINER_KEYS:
            if isinstance(obj.get(key), dict):
                return flatten_tensors(obj[key], path)
        flat = {}
        for key, value in obj.items():
            if isinstance(value, dict) and key != "microfm":
                with_tensors = _nested(value)
                flat.update({f"{key}.{k}": v for k, v in with_tensors.items()})
        if flat:
            return flat
    raise WeightsError(f"backbone.weights: no state dict of tensors found in {path}")


def _nested(obj: dict, depth: int = 0) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in obj.items():
        if isinstance(value, torch.Tensor):
            out[key] = value
        elif isinstance(value, dict) and depth < 3:
            out.update({f"{key}.{k}": v for k, v in _nested(value, depth + 1).items()})
    return out


# ------------------------------------------------------------------------------ resolution
def cache_dir() -> Path:
    """Where downloaded weights go: ``$MICROFM_CACHE/weights`` (default ``~/.cache/microfm``)."""
    root = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "microfm"
    )
    return Path(root) / "weights"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_weights(url: str, sha256: str | None = None) -> Path:
    """Download ``url`` once into :func:`cache_dir` (resumable) and return the local file.

    The file is checked against ``sha256`` when given, or against the hash prefix in its name
    (torch hub's ``name-<hash>.pth`` convention); a cached file is used without any network
    access.

    Raises:
        WeightsError: the download failed or the hash differs.
    """
    from microfm.data.downloads import download

    name = Path(urlparse(url).path).name or "weights.pth"
    dest = cache_dir() / name
    expected = (sha256 or "").lower() or None
    match = _HASH_IN_NAME.search(name)
    prefix = match.group(1) if match and not expected else None
    if dest.is_file():
        return dest
    try:
        digest = download(url, dest, sha=expected, echo=log.info)
    except DataError as exc:
        raise WeightsError(f"backbone.weights: {exc}") from None
    if prefix and not digest.startswith(prefix):
        dest.unlink()
        raise WeightsError(
            f"backbone.weights: {url}: sha256 {digest} does not start with {prefix} (from the "
            "file name); the download was removed"
        )
    return dest


def _first(patterns: list[str]) -> Path | None:
    for pattern in patterns:
        hits = sorted(glob.glob(pattern))
        if hits:
            return Path(hits[-1])
    return None


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub`` (read at each call)."""
    hf_home = os.environ.get("HF_HOME") or os.path.expanduser("~/.cache/huggingface")
    return Path(os.environ.get("HF_HUB_CACHE") or os.path.join(hf_home, "hub"))


def find_hf_cached(
    repo: str, revision: str | None = None, filename: str = "model.safetensors"
) -> Path | None:
    """``filename`` of ``repo`` at ``revision`` (a branch or tag, default ``main``, or a commit
    hash) in the local Hugging Face cache, resolved by ``huggingface_hub`` through the cache's
    ``refs/``; never touches the network.

    Without a ref of that name (a cache copied by hand, or filled by commit hash) a snapshot is
    used only when it is the one snapshot holding the file; several are ambiguous and give None.
    """
    from huggingface_hub import try_to_load_from_cache

    cache = hf_hub_cache()
    hit = try_to_load_from_cache(repo, filename, cache_dir=str(cache), revision=revision)
    if isinstance(hit, str):
        return Path(hit)
    folder = cache / ("models--" + repo.replace("/", "--"))
    if (folder / "refs" / (revision or "main")).is_file():
        return None  # the ref names a snapshot without the file
    snapshots = sorted(glob.glob(str(folder / "snapshots" / "*" / filename)))
    if len(snapshots) == 1 and revision is None:
        return Path(snapshots[0])
    if snapshots:
        log.warning(
            "Hugging Face cache %s: no ref %r and %d snapshots with %s; name a revision "
            "(backbone.weights=hf-hub:%s@<commit>)",
            folder,
            revision or "main",
            len(snapshots),
            filename,
            repo,
        )
    return None


def find_local_weights(name: str, spec: BackboneSpec) -> Path | None:
    """Official weights already on this machine: ``$MICROFM_WEIGHTS`` (official file names or
    ``<name>.pth``/``.safetensors``), torch hub's checkpoint cache, the Hugging Face cache
    (the snapshot its ``main`` ref points to, see :func:`find_hf_cached`)."""
    candidates: list[str] = []
    folder = os.environ.get(WEIGHTS_ENV)
    if folder:
        for pattern in (*spec.files, f"{name}.pth", f"{name}.safetensors"):
            candidates.append(os.path.join(os.path.expanduser(folder), pattern))
    torch_home = os.environ.get("TORCH_HOME") or os.path.expanduser("~/.cache/torch")
    candidates += [os.path.join(torch_home, "hub", "checkpoints", p) for p in spec.files]
    local = _first(candidates)
    if local is None and spec.hf_hub_id:
        for repo in dict.fromkeys((spec.hf_hub_id, spec.hf_hub_id.replace("_qkvb", ""))):
            local = find_hf_cached(repo)
            if local is not None:
                break
    return local


def _hf_hub_weights(weights: str) -> Path:
    """``hf-hub:ORG/NAME[@REVISION]`` (timm's syntax) from the local Hugging Face cache."""
    repo, _, revision = weights.removeprefix("hf-hub:").partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise WeightsError(
            f"backbone.weights={weights}: expected hf-hub:ORG/NAME or hf-hub:ORG/NAME@REVISION"
        )
    try:
        local = find_hf_cached(repo, revision or None)
    except ValueError as exc:  # huggingface_hub's HFValidationError: a malformed repo id
        raise WeightsError(f"backbone.weights={weights}: {exc}") from None
    if local is None:
        rev = f" --revision {revision}" if revision else ""
        raise WeightsError(
            f"backbone.weights={weights}: model.safetensors of {repo} at revision "
            f"{revision or 'main'} is not in the Hugging Face cache {hf_hub_cache()}; microfm "
            f"does not download it: run `huggingface-cli download {repo} model.safetensors{rev}`"
        )
    return local


def resolve_weights(
    name: str, spec: BackboneSpec, weights: str | os.PathLike | None, sha256: str | None = None
) -> Path | None:
    """The local weights file for backbone ``name`` (see the module doc for the order), or
    None when there is none.

    Raises:
        WeightsError: a given file is missing, a download fails, or ``official`` is asked for
            gated weights or for a backbone without an official download.
    """
    if weights:
        weights = str(weights)
        if weights == "official":
            if spec.gated:
                raise WeightsError(
                    f"backbone.weights=official: {name} weights are gated and never downloaded "
                    f"automatically ({spec.source}); then pass backbone.weights=/path/to/file.pth"
                )
            if not spec.url:
                raise WeightsError(
                    f"backbone.weights=official: {name} has no public download; get it from "
                    f"{spec.source or 'its authors'} and pass backbone.weights=/path/to/file"
                )
            local = find_local_weights(name, spec)
            return local if local is not None else fetch_weights(spec.url, sha256)
        if weights.startswith("hf-hub:"):
            return _hf_hub_weights(weights)
        if urlparse(weights).scheme in ("http", "https"):
            return fetch_weights(weights, sha256)
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsError(f"backbone.weights: no such file: {path}")
        return path
    return find_local_weights(name, spec)


# ------------------------------------------------------------------------------ loading
def adapt_input_channels(weight: torch.Tensor, in_chans: int, mode: str = "auto") -> torch.Tensor:
    """Adapt a patch-embedding kernel (D, C0, p, p) to ``in_chans`` channels so that an image
    whose channels are all equal keeps its response (see :mod:`microfm.backbones.channels`)."""
    from microfm.backbones.channels import adapt_patch_kernel

    return adapt_patch_kernel(weight, in_chans, mode)


def load_into(
    model: nn.Module,
    path: str | os.PathLike,
    channel_mode: str = "auto",
    channel_adapter: nn.Module | None = None,
) -> tuple[str, dict[str, torch.Tensor]]:
    """Load the weights at ``path`` into the timm ``model`` (strictly), converting the format
    and adapting the input channels; a microfm checkpoint's learned channel adapter goes into
    ``channel_adapter``.

    Returns:
        The name of the recognised format, and the input normalisation stored with a microfm
        checkpoint (``{"mean": ..., "std": ...}``, empty for other formats).

    Raises:
        WeightsError: listing missing, unexpected and mismatched keys when it does not fit.
    """
    tensors, meta = read_checkpoint(path)
    lora = (((meta.get("config") or {}).get("finetune") or {}).get("lora")) or {}
    state, extra, fmt = convert(tensors, model, lora.get("alpha"), bool(lora.get("use_rslora")))
    proj_key = "patch_embed.proj.weight"
    in_chans = model.patch_embed.proj.in_channels
    if proj_key in state and state[proj_key].ndim == 4 and state[proj_key].shape[1] != in_chans:
        state[proj_key] = adapt_input_channels(state[proj_key], in_chans, channel_mode)
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    wrong_shape = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in state
        if k in own and state[k].shape != own[k].shape
    )
    if missing or unexpected or wrong_shape:

        def _fmt(items: list[str]) -> str:
            head = ", ".join(items[:12])
            return head + (f" ... (+{len(items) - 12} more)" if len(items) > 12 else "")

        raise WeightsError(
            f"backbone.weights: {path} ({fmt} format) does not fit this backbone.\n"
            f"  missing keys ({len(missing)}): {_fmt(missing)}\n"
            f"  unexpected keys ({len(unexpected)}): {_fmt(unexpected)}\n"
            f"  shape mismatches ({len(wrong_shape)}): {_fmt(wrong_shape)}"
        )
    model.load_state_dict(state, strict=True)
    adapter = {k.removeprefix("channel_adapter."): v for k, v in extra.items() if "." in k}
    if adapter:
        if channel_adapter is None:
            raise WeightsError(
                f"backbone.weights: {path} was trained with a learned channel adapter; build "
                "the backbone with backbone.channel_mode=adapter to use it"
            )
        channel_adapter.load_state_dict(adapter)
    log.info("loaded backbone weights from %s (%s format)", path, fmt)
    return fmt, {k: v for k, v in extra.items() if k in ("mean", "std")}


def read_microfm_config(path: str | os.PathLike) -> dict:
    """The resolved config stored in a checkpoint written by ``microfm-train`` (read safely).

    Raises:
        WeightsError: the file is not a microfm checkpoint.
    """
    _, meta = read_checkpoint(path)
    config = meta.get("config") or {}
    if "backbone" not in config:
        raise WeightsError(f"ckpt: {path} is not a microfm checkpoint (no stored config)")
    return meta
