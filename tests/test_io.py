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
