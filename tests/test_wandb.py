"""logger=wandb in offline mode: the files written hold the metrics, the resolved config and
the figures; each job has its own W&B run (none leaks into the next job of the process), and a
resumed run continues the same W&B run id."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from microfm.run.config import compose
from microfm.run.train import train
from tests.conftest import TINY

wandb_internal_pb2 = pytest.importorskip("wandb.proto.wandb_internal_pb2")


def wandb_records(path: Path) -> list:
    """Records of a ``run-<id>.wandb`` file: W&B's LevelDB-style log (32 KiB blocks, records
    of a 7-byte header ``crc32, length, type`` and a protobuf payload split across blocks)."""
    data, pos, block, records, pending = path.read_bytes(), 7, 32768, [], b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block ends with padding too short for a header
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            break
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST part of a record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def offline_run(run_dir: Path) -> tuple[str, list]:
    (folder,) = (run_dir / "wandb").glob("offline-run-*")
    (log,) = folder.glob("run-*.wandb")
    return folder, wandb_records(log)


def history_keys(records) -> set[str]:
    return {
        "/".join(item.nested_key) or item.key
        for r in records
        if r.WhichOneof("record_type") == "history"
        for item in r.history.item
    }


def config_of(records) -> dict:
    config = {}
    for r in records:
        kind = r.WhichOneof("record_type")
        updates = (
            r.run.config.update if kind == "run" else r.config.update if kind == "config" else []
        )
        for item in updates:
            key = "/".join(item.nested_key) or item.key
            config[key] = json.loads(item.value_json)
    return config


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))


@pytest.mark.slow
def test_offline_files_hold_metrics_config_and_images(offline, tmp_path):
    base = [*TINY, "debug=smoke", "logger=wandb", f"results_root={tmp_path}"]
    train(compose([*base, "experiment_id=first"]))
    import wandb

    assert wandb.run is None  # finished when the job ended
    train(compose([*base, "experiment_id=second"]))

    runs = {}
    for name in ("first", "second"):
        run_dir = tmp_path / "seg" / name
        run_id = (run_dir / "wandb" / "run_id").read_text().strip()
        folder, records = offline_run(run_dir)
        assert folder.name.endswith(run_id)
        runs[name] = run_id
        keys = history_keys(records)
        for key in ("train/loss", "val/cellseg/op_csb", "test/cellseg/op_csb"):
            assert key in keys, (key, sorted(keys))
        config = config_of(records)
        assert config["experiment_id"] == name  # the resolved microfm config
        assert config["backbone"]["name"] == "vit_test"
        assert config["run_dir"] == str(run_dir)
        images = sorted(p.name for p in (folder / "files" / "media" / "images").rglob("*.png"))
        assert any(n.startswith("training_curves") for n in images), images
        assert any(n.startswith("test_cellseg") for n in images), images
        assert {"figs/training_curves", "figs/test_cellseg"} <= {k.split("/_")[0] for k in keys}
        # the image files are the figures microfm wrote
        assert (run_dir / "figs" / "test_cellseg.png").is_file()
    assert runs["first"] != runs["second"]

    # a resumed job (same folder, resume=auto) continues the same W&B run
    train(compose([*base, "experiment_id=first", "resume=auto", "trainer.max_epochs=3"]))
    assert (tmp_path / "seg" / "first" / "wandb" / "run_id").read_text().strip() == runs["first"]
    folders = sorted((tmp_path / "seg" / "first" / "wandb").glob("offline-run-*"))
    assert len(folders) == 2 and all(f.name.endswith(runs["first"]) for f in folders)
