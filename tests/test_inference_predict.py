"""load_model and Predictor: the checkpoint alone rebuilds the trained model (LoRA merged),
images of any size, writers, microfm-predict on 16-bit BBBC039 and bad inputs."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import torch

from microfm.errors import DataError, WeightsError
from microfm.inference import Predictor, load_model
from microfm.inference.files import find_inputs, predict_files
from microfm.inference.writers import as_labels, cell_table
from microfm.run.config import compose
from tests.inference_fixtures import trained_run  # noqa: F401  (session fixture)


@pytest.fixture(scope="module")
def model(trained_run):  # noqa: F811
    return load_model(trained_run / "ckpts" / "best.ckpt")


def test_load_model_computes_the_trained_module(trained_run, model):  # noqa: F811
    from microfm.inference.checkpoint import build_inference_model, read_checkpoint
    from microfm.modules import SupervisedModule

    ckpt = read_checkpoint(trained_run / "ckpts" / "best.ckpt")
    backbone, tasks = build_inference_model(ckpt["microfm"]["config"], ckpt["microfm"]["meta"])
    module = SupervisedModule(backbone, tasks)
    module.load_state_dict(ckpt["state_dict"])  # strict: the rebuilt module fits exactly
    module.eval()
    assert any("lora_" in k for k in ckpt["state_dict"])  # adapters were trained ...
    assert not any("lora_" in k for k in model.state_dict())  # ... and merged on loading
    x = torch.rand(2, 1, 48, 40)
    with torch.no_grad():
        ref = module(x)["cellseg"]
        out = model(x)["cellseg"]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # the tuned watershed thresholds travel in the checkpoint
    assert model.tasks["cellseg"].postprocess.cells_max == pytest.approx(
        float(ckpt["state_dict"]["tasks.cellseg.thresholds"][0])
    )
    assert model.crop_size == 48 and model.patch_size == 8 and not model.training


def test_load_model_errors_name_the_file(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_model(tmp_path / "missing.ckpt")
    bad = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {}}, bad)
    with pytest.raises(WeightsError, match="no microfm config"):
        load_model(bad)


@pytest.mark.parametrize("shape", [(5, 7), (48, 48), (61, 130)])
def test_predictor_keeps_any_image_size(model, shape):
    predictor = Predictor(model, tile_size=32, overlap=0.25, batch_size=3, device="cpu")
    image = np.random.default_rng(0).integers(0, 4096, shape).astype(np.uint16)
    pred = predictor.predict(image)
    res = pred.results["cellseg"]
    assert res["labels"].shape == shape and res["dist"].shape == shape
    assert pred.raw["cellseg"].shape == (1, *shape)
    assert float(res["dist"].min()) >= 0.0 and float(res["dist"].max()) <= 1.0
    # post-processing runs on the blended whole image with the checkpoint's thresholds
    np.testing.assert_array_equal(res["labels"], model.tasks["cellseg"].postprocess(res["dist"]))


def test_normalisation_uses_whole_image_statistics(model):
    predictor = Predictor(model, tile_size=32, device="cpu")
    image = np.random.default_rng(1).integers(100, 60000, (1, 70, 90)).astype(np.uint16)
    seen = []
    forward = predictor.forward
    predictor.forward = lambda tiles: seen.append(tiles.clone()) or forward(tiles)
    predictor.predict(image)
    whole = model.normalizer(image)
    lo, hi = np.percentile(image, [1, 99.8])
    np.testing.assert_allclose(whole, (image - lo) / (hi - lo), rtol=1e-4, atol=1e-5)
    tiles = torch.cat(seen)
    # tiles are cut from the normalised whole image, not normalised one by one
    assert float(tiles.min()) >= float(whole.min()) - 1e-5
    assert float(tiles.max()) <= float(whole.max()) + 1e-5
    assert float(tiles.amax(dim=(1, 2, 3)).min()) < 0.999  # some tile lacks the global max


def test_tta_changes_the_model_calls_not_the_size(model):
    plain = Predictor(model, tile_size=32, device="cpu")
    tta = Predictor(model, tile_size=32, device="cpu", tta=True)
    image = np.random.default_rng(2).random((40, 40)).astype(np.float32)
    a, b = plain.predict(image).raw["cellseg"], tta.predict(image).raw["cellseg"]
    assert a.shape == b.shape and not np.allclose(a, b)


def test_cell_table_and_label_dtypes():
    labels = np.zeros((6, 8), np.int32)
    labels[1:3, 1:4] = 1
    labels[4:6, 5:8] = 7
    image = np.stack([np.arange(48).reshape(6, 8), np.full((6, 8), 5)]).astype(np.uint16)
    t = cell_table(labels, image)
    assert t["label"].tolist() == [1, 7] and t["area"].tolist() == [6, 6]
    np.testing.assert_allclose(t["centroid_y"], [1.5, 4.5])
    np.testing.assert_allclose(t["centroid_x"], [2.0, 6.0])
    np.testing.assert_allclose(
        t["mean_intensity_c0"], [image[0][labels == k].mean() for k in (1, 7)]
    )
    np.testing.assert_allclose(t["mean_intensity_c1"], [5.0, 5.0])
    assert as_labels(labels).dtype == np.uint16
    big = np.array([[0, 70000]])
    assert as_labels(big).dtype == np.uint32


def _bbbc_inputs(shared, tmp_path, n=2):
    src = sorted((shared / "data" / "bbbc039_nuclei" / "images").glob("*.tif"))[:n]
    folder = tmp_path / "in"
    folder.mkdir()
    for p in src:
        shutil.copy(p, folder / p.name)
    return folder, src


@pytest.mark.shared
def test_predict_bbbc039_16bit_writes_every_output(shared, trained_run, tmp_path):  # noqa: F811
    from microfm.cli.predict import predict

    folder, src = _bbbc_inputs(shared, tmp_path)
    (folder / "broken.tif").write_bytes(b"II*\x00 not a tiff")
    out = tmp_path / "out"
    overrides = [
        f"ckpt={trained_run / 'ckpts' / 'best.ckpt'}",
        f"input={folder}",
        f"output={out}",
        "tile_size=64",
        "device=cpu",
        "progress=false",
        "save_raw=true",
    ]
    status = predict(compose(overrides, config_name="predict"))
    assert status == 1  # the broken file is reported ...
    for p in src:  # ... and the others are done
        raw = tifffile.imread(p)
        assert raw.dtype == np.uint16
        stem = out / p.stem
        labels = tifffile.imread(f"{stem}_cellseg_labels.tif")
        assert labels.shape == raw.shape and labels.dtype in (np.uint16, np.uint32)
        dist = tifffile.imread(f"{stem}_cellseg_dist.tif")
        assert dist.dtype == np.float32 and dist.shape == raw.shape
        from PIL import Image

        with Image.open(f"{stem}_cellseg_overlay.png") as im:
            assert im.size == (raw.shape[1], raw.shape[0]) and im.mode == "RGB"
        import csv

        with open(f"{stem}_cellseg_cells.csv") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == len(np.unique(labels)) - 1
        if rows:
            first = rows[0]
            mask = labels == int(first["label"])
            assert int(first["area"]) == int(mask.sum())
            assert float(first["mean_intensity_c0"]) == pytest.approx(raw[mask].mean(), rel=1e-5)
    assert not list(out.glob("broken_*"))
    # existing outputs are kept: a second run skips, overwrite=true redoes
    before = (out / f"{src[0].stem}_cellseg_labels.tif").stat().st_mtime_ns
    (folder / "broken.tif").unlink()
    assert predict(compose(overrides, config_name="predict")) == 0
    (folder / src[1].name).unlink()  # (one image is enough for the overwrite run)
    assert (out / f"{src[0].stem}_cellseg_labels.tif").stat().st_mtime_ns == before
    assert predict(compose([*overrides, "overwrite=true"], config_name="predict")) == 0
    assert (out / f"{src[0].stem}_cellseg_labels.tif").stat().st_mtime_ns != before
    assert not list(out.rglob("*.tmp"))


def test_unreadable_inputs_are_reported_and_skipped(model, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    good = np.random.default_rng(0).integers(0, 4000, (40, 50)).astype(np.uint16)
    tifffile.imwrite(folder / "a.tif", good)
    (folder / "b.tif").write_bytes(b"garbage")
    tifffile.imwrite(folder / "c.tif", np.zeros((3, 2, 40, 50), np.uint16))  # a Z stack of 2ch
    predictor = Predictor(model, tile_size=32, device="cpu")
    outcome = predict_files(predictor, find_inputs(folder), tmp_path / "out", progress=False)
    assert outcome.done == ["a"]
    assert [n for n, _ in outcome.failed] == ["b", "c"]
    assert "b.tif" in outcome.failed[0][1]
    with pytest.raises(DataError, match="no image file"):
        find_inputs(str(tmp_path / "nothing*.tif"))
    # results written next to the inputs are not taken for inputs on the next run
    outcome = predict_files(predictor, find_inputs(folder, exclude=folder), folder, progress=False)
    assert outcome.done == ["a"] and (folder / "a_cellseg_labels.tif").is_file()
    assert list(find_inputs(folder, exclude=folder)) == ["a", "b", "c"]


def test_predict_console_script(trained_run, tmp_path):  # noqa: F811
    tifffile.imwrite(tmp_path / "img.tif", np.random.default_rng(0).integers(0, 999, (30, 41)))
    cmd = [
        sys.executable,
        "-m",
        "microfm.cli.predict",
        f"ckpt={trained_run / 'ckpts' / 'best.ckpt'}",
        f"input={tmp_path / 'img.tif'}",
        f"output={tmp_path / 'out'}",
        "progress=false",
    ]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert tifffile.imread(tmp_path / "out" / "img_cellseg_labels.tif").shape == (30, 41)
    assert (tmp_path / "out" / "predict.log").is_file()


def test_predict_cli_errors_exit_with_status_2(tmp_path, monkeypatch, capsys):
    from microfm.cli.predict import main

    argv = ["microfm-predict", "ckpt=/nonexistent.ckpt", f"input={tmp_path}", "output=out"]
    tifffile.imwrite(tmp_path / "img.tif", np.zeros((8, 8), np.uint16))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2 and "not found: /nonexistent.ckpt" in capsys.readouterr().err
