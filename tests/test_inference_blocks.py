"""Zarr images predicted block by block with a halo give the whole-image result: the same
blended raw output (global tile grid) and the same objects (ownership by first pixel), with
unique ids across blocks."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from torch import nn

from microfm.backbones import build_backbone
from microfm.data.synthetic import SyntheticConfig, make_split
from microfm.inference import Predictor
from microfm.inference.blocks import predict_zarr
from microfm.inference.checkpoint import InferenceModel
from microfm.inference.files import find_inputs, predict_files
from microfm.inference.postprocess import Watershed
from microfm.tasks import CellSegTask
from microfm.transforms.intensity import Normalizer


class ImageHead(nn.Module):
    """A 'distance map' that is a smooth function of the image (bright nuclei -> high), plus
    a small tile-dependent part from the backbone so that blending matters."""

    def forward(self, layers, image):
        ctx = layers[0].mean(dim=(1, 2, 3)).view(-1, 1, 1, 1)
        return torch.sigmoid(6 * (image[:, :1] - 0.45) + 0.01 * torch.tanh(ctx))


def _model() -> InferenceModel:
    torch.manual_seed(0)
    backbone = build_backbone("vit_test", in_chans=1)
    task = CellSegTask(ImageHead(), layers=[3], postprocess=Watershed(0.7, 0.4))
    return InferenceModel(backbone, [task], Normalizer("percentile", 1, 99.8)).eval()


def _big_image(h: int, w: int) -> np.ndarray:
    """Synthetic nuclei tiled into an (h, w) uint16 image."""
    tile = make_split(1, "test", 1, SyntheticConfig(image_size=96))[0]["image"][0]
    reps = (-(-h // 96), -(-w // 96))
    return np.tile(tile, reps)[:h, :w].astype(np.uint16)


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two label images hold the same objects (ids may differ)."""
    if (a > 0).tolist() != (b > 0).tolist():
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


@pytest.fixture(scope="module")
def zarr_case(tmp_path_factory):
    import zarr

    root = tmp_path_factory.mktemp("zarr")
    image = _big_image(203, 237)
    z = zarr.open_array(
        root / "big.zarr", mode="w", shape=image.shape, chunks=(64, 64), dtype="uint16"
    )
    z[:] = image
    return root, image


def test_blocks_reproduce_the_whole_image_prediction(zarr_case, tmp_path):
    import zarr

    root, image = zarr_case
    model = _model()
    predictor = Predictor(model, tile_size=32, overlap=0.25, batch_size=4, device="cpu")
    whole = predictor.predict(image)
    paths = predict_zarr(
        predictor, root / "big.zarr", tmp_path, "big", block_size=64, halo=40, save_raw=True
    )
    out = zarr.open_group(str(tmp_path / "big_cellseg_prediction.zarr"), mode="r")
    dist = np.asarray(out["dist"])
    # statistics from a subsample equal the whole image's here (small image: no subsampling)
    np.testing.assert_allclose(dist, whole.raw["cellseg"][0], atol=2e-6, rtol=0)
    labels = np.asarray(out["labels"])
    assert labels.dtype == np.uint32 and labels.shape == image.shape
    expected = whole.results["cellseg"]["labels"]
    assert expected.max() > 20  # many objects, many of them across block borders
    assert _same_partition(labels, expected)
    ids = np.unique(labels)
    assert ids[0] == 0 and ids[-1] == len(ids) - 1  # unique consecutive ids over blocks
    with open(tmp_path / "big_cellseg_cells.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(ids) - 1
    for row in rows[:5]:
        mask = labels == int(row["label"])
        assert int(row["area"]) == int(mask.sum())
        ys, xs = np.nonzero(mask)
        assert float(row["centroid_y"]) == pytest.approx(ys.mean())
        assert float(row["centroid_x"]) == pytest.approx(xs.mean())
        assert float(row["mean_intensity_c0"]) == pytest.approx(image[mask].mean())
    assert (tmp_path / "big_cellseg_overlay.png") in paths
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # temporaries removed


def test_zarr_inputs_go_through_predict_files_and_are_not_overwritten(zarr_case, tmp_path):
    root, _ = zarr_case
    predictor = Predictor(_model(), tile_size=32, device="cpu")
    inputs = find_inputs(root)
    assert list(inputs) == ["big"]
    first = predict_files(predictor, inputs, tmp_path, zarr_block=96, progress=False)
    assert first.done == ["big"]
    assert (tmp_path / "big_cellseg_prediction.zarr" / "labels").is_dir()
    assert not (tmp_path / "big_cellseg_prediction.zarr" / "dist").exists()  # save_raw=False
    again = predict_files(predictor, inputs, tmp_path, zarr_block=96, progress=False)
    assert again.skipped == ["big"] and not again.done


def test_block_settings_are_checked(zarr_case, tmp_path):
    from microfm.errors import ConfigError

    root, _ = zarr_case
    predictor = Predictor(_model(), tile_size=64, device="cpu")
    with pytest.raises(ConfigError, match="block_size"):
        predict_zarr(predictor, root / "big.zarr", tmp_path, "big", block_size=32)
