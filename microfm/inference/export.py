"""Export a trained model to ONNX (dynamic batch, height and width) or TorchScript, with a
parity check against PyTorch as part of the export.

The exported graph is the model's forward on normalised tiles: input ``image`` (B, C, H, W)
float32 with H and W multiples of the patch size, one output per task (the raw outputs a
sliding window blends). Intensity normalisation, tiling and post-processing stay outside the
graph; a JSON file written beside the model records what they need (normalisation, channels,
patch size, watershed thresholds, class names).

ONNX goes through ``torch.onnx.export(dynamo=True)`` (``torch.export`` + onnxscript), which
traces DINOv3's rotary position embeddings and DINOv2's position-embedding interpolation with
symbolic sizes. Height and width are declared as ``patch_size × Dim``, so the exporter knows
they divide into whole patches.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from microfm.errors import ConfigError
from microfm.inference.checkpoint import InferenceModel
from microfm.utils.io import atomic_write_text

log = logging.getLogger(__name__)
FORMATS = ("onnx", "torchscript")
PARITY_ATOL = 1e-4


@contextlib.contextmanager
def _quiet(*names: str):
    """Only warnings from these loggers (the ONNX optimiser logs every pass at INFO)."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


class ExportModule(nn.Module):
    """``forward(image) -> tuple`` of raw outputs in task order (exporters want tensors)."""

    def __init__(self, model: InferenceModel) -> None:
        super().__init__()
        self.model = model
        self.names = list(model.task_names)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(image)
        return tuple(out[name] for name in self.names)


def parity_shapes(model: InferenceModel) -> list[tuple[int, int, int, int]]:
    """Input shapes the parity check runs: several batch sizes and non-square sizes,
    including the backbone's native grid."""
    p, c = model.patch_size, model.in_chans
    native = getattr(model.backbone.model.patch_embed, "grid_size", (8, 8)) or (8, 8)
    return [(2, c, 4 * p, 6 * p), (1, c, 3 * p, 5 * p), (3, c, native[0] * p, native[1] * p)]


def sidecar(model: InferenceModel, outputs: Sequence[str]) -> dict:
    """What a user of the exported graph needs to prepare inputs and read outputs."""
    tasks = {}
    for name, task in model.tasks.items():
        info: dict = {"type": type(task).__name__}
        if hasattr(task, "postprocess") and hasattr(task, "thresholds"):
            ws = task.postprocess
            info["watershed"] = {"cells_max": ws.cells_max, "cell_fill": ws.cell_fill}
            info["watershed"]["min_area"] = ws.min_area
        if getattr(task, "class_names", None):
            info["class_names"] = list(task.class_names)
        tasks[name] = info
    return {
        "input": "image",
        "input_layout": "B, C, H, W float32, H and W multiples of patch_size",
        "outputs": list(outputs),
        "patch_size": model.patch_size,
        "in_chans": model.in_chans,
        "channels": model.channels,
        "normalization": model.normalizer.state(),
        "tasks": tasks,
        "source": model.source,
    }


def _inputs(shape: Sequence[int], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g)


def check_parity(run, module: ExportModule, shapes: Sequence[Sequence[int]]) -> float:
    """Max |exported - PyTorch| over the outputs for random inputs of each shape;
    ``run(x: np.ndarray) -> list[np.ndarray]``."""
    worst = 0.0
    for i, shape in enumerate(shapes):
        x = _inputs(shape, seed=i)
        with torch.inference_mode():
            ref = [o.numpy() for o in module(x)]
        got = run(x.numpy())
        for name, a, b in zip(module.names, got, ref):
            if a.shape != b.shape:
                raise RuntimeError(f"exported {name} output has shape {a.shape}, not {b.shape}")
            worst = max(worst, float(np.max(np.abs(a - b))))
    return worst


def export_onnx(
    model: InferenceModel,
    path: str | os.PathLike,
    opset: int | None = None,
    check: bool = True,
    atol: float = PARITY_ATOL,
) -> dict:
    """Export to ONNX with dynamic batch, height and width; check parity with onnxruntime.

    Returns:
        A report: ``path``, ``outputs``, ``max_abs_diff`` and the ``shapes`` checked.

    Raises:
        RuntimeError: when the exported graph differs from PyTorch by more than ``atol``.
    """
    from torch.export import Dim

    model = model.cpu().eval()
    module = ExportModule(model).eval()
    p = model.patch_size
    example = _inputs((2, model.in_chans, 4 * p, 6 * p), seed=0)
    dims = {0: Dim("batch", min=1, max=4096), 2: p * Dim("h", max=4096), 3: p * Dim("w", max=4096)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    kwargs = {"opset_version": opset} if opset else {}
    with _quiet("onnx_ir", "onnxscript"):
        program = torch.onnx.export(
            module,
            (example,),
            dynamo=True,
            dynamic_shapes={"image": dims},
            input_names=["image"],
            output_names=module.names,
            external_data=False,
            verbose=False,
            **kwargs,
        )
    program.save(str(tmp))
    report = {"path": str(path), "format": "onnx", "outputs": module.names}
    if check:
        import onnxruntime as ort

        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        shapes = parity_shapes(model)
        diff = check_parity(lambda x: session.run(None, {"image": x}), module, shapes)
        report.update(max_abs_diff=diff, shapes=[list(s) for s in shapes])
        if not diff <= atol:
            tmp.unlink(missing_ok=True)
            raise RuntimeError(
                f"ONNX parity check failed: max |onnx - torch| = {diff:.3g} > {atol}"
            )
    os.replace(tmp, path)
    return report


def export_torchscript(
    model: InferenceModel, path: str | os.PathLike, check: bool = True, atol: float = PARITY_ATOL
) -> dict:
    """Export to TorchScript by tracing (input sizes stay dynamic); check parity."""
    model = model.cpu().eval()
    module = ExportModule(model).eval()
    p = model.patch_size
    example = _inputs((2, model.in_chans, 4 * p, 6 * p), seed=0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with torch.no_grad(), warnings.catch_warnings():
        # shape checks in Python become constants of the trace (harmless here: the parity
        # check below runs other sizes); torch.jit is deprecated in recent PyTorch
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated", category=FutureWarning)
        traced = torch.jit.trace(module, example, check_trace=False)
        torch.jit.save(traced, str(tmp))
        loaded = torch.jit.load(str(tmp)) if check else None
    report = {"path": str(path), "format": "torchscript", "outputs": module.names}
    if loaded is not None:
        shapes = parity_shapes(model)

        def run(x):
            with torch.no_grad():
                return [o.numpy() for o in loaded(torch.from_numpy(x))]

        diff = check_parity(run, module, shapes)
        report.update(max_abs_diff=diff, shapes=[list(s) for s in shapes])
        if not diff <= atol:
            tmp.unlink(missing_ok=True)
            raise RuntimeError(f"TorchScript parity check failed: max diff {diff:.3g} > {atol}")
    os.replace(tmp, path)
    return report


def export(
    model: InferenceModel,
    path: str | os.PathLike,
    fmt: str = "onnx",
    check: bool = True,
    opset: int | None = None,
) -> dict:
    """Export ``model`` to ``path`` in ``fmt`` (``onnx`` | ``torchscript``) and write
    ``<path>.json`` describing inputs, outputs and pre/post-processing."""
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {FORMATS}, got {fmt!r}")
    if fmt == "onnx":
        report = export_onnx(model, path, opset=opset, check=check)
    else:
        report = export_torchscript(model, path, check=check)
    meta = {**sidecar(model, report["outputs"]), "export": report}
    atomic_write_text(f"{path}.json", json.dumps(meta, indent=2) + "\n")
    return report
