"""A multi-channel model trained through data=folder (channel selection, dataset-level
normalisation stored in the checkpoint) predicting a multi-channel TIFF."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import tifffile

from microfm.data.synthetic import SyntheticConfig, make_split
from microfm.inference import Predictor, load_model
from microfm.inference.files import find_inputs, predict_files
from tests.inference_fixtures import train_tiny


def _three_channel(image: np.ndarray, rng) -> np.ndarray:
    """(3, H, W) uint16: nuclei in channel 2, a dim copy in 0, noise in 1."""
    img = image[0].astype(np.float32)
    noise = rng.integers(0, 50, img.shape)
    return np.stack([img * 0.5 + 100, noise, img * 3 + 500]).astype(np.uint16)


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mc")
    data = root / "data"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i, s in enumerate(make_split(0, "train", 10, SyntheticConfig(image_size=48))):
        image = _three_channel(s["image"], rng)
        tifffile.imwrite(data / "images" / f"im{i}.tif", image, photometric="minisblack")
        tifffile.imwrite(data / "labels" / f"im{i}.tif", s["instances"].astype(np.uint16))
    run = train_tiny(
        root / "results",
        [
            "data=folder",
            f"data.root={data}",
            "data.channels=[2,0]",
            "data.normalize.scope=dataset",
            "data.crop_size=32",
            "data.split.val=0.2",
            "data.split.test=0.2",
            f"data.cache_dir={root / 'cache'}",
            "test=false",
        ],
        experiment_id="mc",
        synthetic=False,
    )
    return run


def test_multichannel_tiff_with_checkpointed_channels_and_normalisation(folder_run, tmp_path):
    import torch

    ckpt = torch.load(folder_run / "ckpts" / "best.ckpt", map_location="cpu", weights_only=False)
    state = ckpt["FolderDataModule"]["microfm_data"]
    model = load_model(folder_run / "ckpts" / "best.ckpt")
    assert model.in_chans == 2 and model.channels == [2, 0]
    assert model.normalizer.scope == "dataset"
    offset, scale = model.normalizer.dataset_stats
    np.testing.assert_allclose(offset, state["normalizer"]["dataset_stats"][0])
    np.testing.assert_allclose(scale, state["normalizer"]["dataset_stats"][1])

    rng = np.random.default_rng(5)
    sample = make_split(3, "test", 1, SyntheticConfig(image_size=72))[0]
    image = _three_channel(sample["image"], rng)  # (3, 72, 72) as stored, 3 channels
    tifffile.imwrite(tmp_path / "multi.tif", image, photometric="minisblack")

    predictor = Predictor(model, tile_size=32, device="cpu")
    x = predictor.prepare(image)
    # channels 2 and 0, in this order, normalised with the training set's statistics
    expected = (image[[2, 0]].astype(np.float64) - offset[:, None, None]) / scale[:, None, None]
    np.testing.assert_allclose(x, expected, rtol=1e-5, atol=1e-5)

    # a model trained for two steps: choose thresholds that surely give objects
    dist = predictor.raw(x)["cellseg"][0]
    q = np.quantile(dist, [0.5, 0.9])
    model.tasks["cellseg"].thresholds.copy_(torch.tensor([q[1], q[0]], dtype=torch.float64))
    outcome = predict_files(
        predictor, find_inputs(tmp_path / "multi.tif"), tmp_path / "out", progress=False
    )
    assert outcome.done == ["multi"] and not outcome.failed
    labels = tifffile.imread(tmp_path / "out" / "multi_cellseg_labels.tif")
    assert labels.shape == (72, 72)
    with open(tmp_path / "out" / "multi_cellseg_cells.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and {"mean_intensity_c0", "mean_intensity_c1"} <= set(rows[0])
    for row in rows[:3]:  # intensities of the model's channels (2 then 0), raw units
        mask = labels == int(row["label"])
        assert float(row["mean_intensity_c0"]) == pytest.approx(image[2][mask].mean(), rel=1e-5)
        assert float(row["mean_intensity_c1"]) == pytest.approx(image[0][mask].mean(), rel=1e-5)
    with pytest.raises(Exception, match="channel"):
        predictor.predict(image[:2])  # channel 2 missing
