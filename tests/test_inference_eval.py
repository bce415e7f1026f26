"""microfm-eval scores the full prediction path with the task metrics: its numbers equal
microfm.metrics on the same predictions; threshold search on val; microfm-summarize."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from microfm.inference import Predictor, load_model
from microfm.inference.evaluate import eval_datamodule
from microfm.metrics import instance_scores
from microfm.run.config import compose
from tests.inference_fixtures import trained_run  # noqa: F401  (session fixture)


def _eval(trained_run, tmp_path, *extra):  # noqa: F811
    from microfm.cli.eval import run_eval

    cfg = compose(
        [
            f"ckpt={trained_run / 'ckpts' / 'best.ckpt'}",
            f"output={tmp_path}",
            "tile_size=32",
            "device=cpu",
            "progress=false",
            *extra,
        ],
        config_name="eval",
    )
    return run_eval(cfg)


def _predictions(trained_run, thresholds=None):  # noqa: F811
    """Labels and ground truth of the test split, predicted independently of microfm-eval."""
    from microfm.inference.checkpoint import read_checkpoint

    model = load_model(trained_run / "ckpts" / "best.ckpt")
    if thresholds is not None:
        import torch

        model.tasks["cellseg"].thresholds.copy_(torch.tensor(thresholds, dtype=torch.float64))
    dm = eval_datamodule(read_checkpoint(trained_run / "ckpts" / "best.ckpt")["microfm"]["config"])
    dm.setup()
    predictor = Predictor(model, tile_size=32, device="cpu", channels=None)
    preds, gts = [], []
    for sample in dm.datasets["test"].samples:  # synthetic: normalised images in memory
        pred = predictor.predict(sample["image"], normalized=True)
        preds.append(pred.results["cellseg"]["labels"])
        gts.append(np.asarray(sample["instances"]))
    return preds, gts


def test_eval_metrics_equal_microfm_metrics_on_the_same_predictions(trained_run, tmp_path):  # noqa: F811
    (tmp_path / "metrics.json").write_text(json.dumps({"from_training": 1.0}))
    results = _eval(trained_run, tmp_path)
    preds, gts = _predictions(trained_run)
    expected = instance_scores(preds, gts, thresholds=(0.5, 0.75, 0.9))
    for key, value in expected.items():
        assert results[f"eval/cellseg/{key}"] == pytest.approx(value, abs=1e-6), key
    assert results["eval/cellseg/num_images"] == len(gts)
    stored = json.loads((tmp_path / "metrics.json").read_text())
    assert stored["from_training"] == 1.0  # merged, not replaced
    assert stored["eval/cellseg/op_csb"] == pytest.approx(expected["op_csb"], abs=1e-6)
    assert stored["eval_info"]["split"] == "test" and stored["eval_info"]["tile_size"] == 32
    with open(tmp_path / "eval_test_per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(gts)
    for row, pred, gt in zip(rows, preds, gts):
        one = instance_scores(pred, gt, thresholds=(0.5, 0.75, 0.9))
        assert float(row["cellseg/op_csb"]) == pytest.approx(one["op_csb"], abs=1e-6)
        assert float(row["cellseg/seg"]) == pytest.approx(one["seg"], abs=1e-6)


def test_eval_threshold_search_on_val_sets_the_thresholds(trained_run, tmp_path):  # noqa: F811
    grid = "grid={cells_max:[0.2,0.5,0.8],cell_fill:[0.05,0.15]}"
    results = _eval(trained_run, tmp_path, "threshold_search=true", grid)
    cm, cf = results["eval/cellseg/cells_max"], results["eval/cellseg/cell_fill"]
    assert cm in (0.2, 0.5, 0.8) and cf in (0.05, 0.15)
    preds, gts = _predictions(trained_run, thresholds=[cm, cf])
    expected = instance_scores(preds, gts, thresholds=(0.5, 0.75, 0.9))
    assert results["eval/cellseg/op_csb"] == pytest.approx(expected["op_csb"], abs=1e-6)
    assert json.loads((tmp_path / "metrics.json").read_text())["eval_info"]["threshold_search"]


@pytest.mark.slow
@pytest.mark.shared
def test_eval_on_bbbc039_through_data_folder(shared, trained_run, tmp_path):  # noqa: F811
    """Another dataset than the training one: raw 16-bit files normalised with the
    checkpoint's normalisation, whole 520x696 images through the sliding window."""
    import shutil

    src = shared / "data" / "bbbc039_nuclei"
    root = tmp_path / "bbbc039"
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True)
        for p in sorted((src / sub).glob("*.tif"))[:6]:  # a few images keep the test short
            shutil.copy(p, root / sub / p.name)
    results = _eval(
        trained_run,
        tmp_path,
        "data=folder",
        f"data.root={root}",
        "data.split.val=0.17",
        "data.split.test=0.34",
        f"data.cache_dir={tmp_path / 'cache'}",
        "tile_size=64",
    )
    assert results["eval/cellseg/num_images"] == 2
    assert 0.0 <= results["eval/cellseg/op_csb"] <= 1.0
    assert results["eval_info"]["data"] == "FolderDataModule"


def test_eval_errors_name_the_problem(trained_run, tmp_path):  # noqa: F811
    from microfm.errors import DataError

    with pytest.raises(DataError, match="split=nope"):
        _eval(trained_run, tmp_path, "split=nope")


def test_summarize_gathers_runs(tmp_path):
    from microfm.cli.summarize import summary_dir
    from microfm.inference.summarize import summarize

    for i, (bb, ft, value) in enumerate(
        [
            ("vit_a", "lora", 0.5),
            ("vit_a", "lora", 0.7),
            ("vit_a", "full", 0.4),
            ("vit_b", "lora", 0.9),
        ]
    ):
        run = tmp_path / "results" / "seg" / f"run{i}"
        run.mkdir(parents=True)
        (run / "config_used.yaml").write_text(
            f"seed: {i}\nbackbone: {{name: {bb}}}\nfinetune: {{name: {ft}}}\n"
            "task: {name: cellseg, monitor: val/cellseg/op_csb}\n"
            "data: {_target_: microfm.data.SyntheticDataModule}\n"
        )
        metrics = {"test/cellseg/op_csb": value, "best_ckpt": "x.ckpt", "eval_info": {"a": 1}}
        (run / "metrics.json").write_text(json.dumps(metrics))
    out = summary_dir(str(tmp_path / "results"), None)
    rows, plots = summarize(tmp_path / "results", out)
    assert len(rows) == 4
    assert [p.name for p in plots] == ["test_cellseg_op_csb.png"] and plots[0].is_file()
    with open(tmp_path / "results" / "summary" / "summary.csv") as f:
        table = list(csv.DictReader(f))
    assert table[0]["dataset"] == "synthetic" and table[0]["backbone"] == "vit_a"
    assert sorted(float(r["test/cellseg/op_csb"]) for r in table) == [0.4, 0.5, 0.7, 0.9]
    assert "best_ckpt" not in table[0]  # only numbers are gathered
    rows_again, _ = summarize(tmp_path / "results", out)  # its own output is not a run
    assert len(rows_again) == 4
