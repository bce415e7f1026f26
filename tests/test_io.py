"""Atomic writes and the merge-on-write metrics store."""

from __future__ import annotations

import json
import math

import numpy as np

from microfm.utils.io import atomic_write_text, update_json


def test_update_json_merges_and_converts(tmp_path):
    path = tmp_path / "metrics.json"
    update_json(path, {"a": 1, "b": np.float32(0.5)})
    update_json(path, {"b": 2, "c": [np.int64(3)], "d": math.nan})
    assert json.loads(path.read_text()) == {"a": 1, "b": 2, "c": [3], "d": None}
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == ["metrics.json"]


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "sub" / "x.txt"
    atomic_write_text(path, "hello")
    atomic_write_text(path, "world")
    assert path.read_text() == "world"
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.txt"]


def test_figures_leave_the_users_matplotlib_backend_alone(tmp_path):
    """Run figures render off-screen without pyplot: a notebook keeps its inline backend."""
    import matplotlib
    import matplotlib.pyplot as plt

    from microfm.utils.figures import plot_curves

    before = matplotlib.get_backend()
    open_before = plt.get_fignums()
    matplotlib.use("svg")  # stands in for a notebook's inline backend
    try:
        plot_curves({"val/loss": [(0, 1.0), (1, 0.5)]}, tmp_path / "curves.png")
        assert matplotlib.get_backend() == "svg"
        assert plt.get_fignums() == open_before  # nothing left open in pyplot
    finally:
        matplotlib.use(before)
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
