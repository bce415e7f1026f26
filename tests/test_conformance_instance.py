"""Instance metrics equal the reference implementations within 1e-6.

* SEG, DET, OP_CSB: ``py-ctcmetrics`` (``ctc_metrics``), each list of images being the frames of
  one sequence written as CTC 16-bit TIFFs, the ground truth as both SEG and TRA markers; the
  frames are matched with its own ``match_computed_to_reference_masks`` and scored with its
  ``calculate_metrics``, exactly as ``evaluate_sequence`` does after reading the folders.
* AP at IoU 0.5/0.75/0.9 (``accuracy``), F1, precision, recall, PQ, SQ: ``stardist.matching``
  for one pair and ``matching_dataset`` for a list.

Cases: real BBBC039 nuclei labels with perturbed predictions (merged, split, shifted, missing,
spurious cells, all at once), and edge cases (empty ground truth, empty prediction, both
empty, non-consecutive ids, uint16 and int32, exact IoU = 0.5 ties).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi

from microfm.metrics import instance_scores

ctc_eval = pytest.importorskip("ctc_metrics.scripts.evaluate")
from ctc_metrics.metrics import det, op_csb, seg  # noqa: E402
from ctc_metrics.utils.representations import (  # noqa: E402
    count_acyclic_graph_correction_operations,
)

stardist_matching = pytest.importorskip("stardist.matching")

TOL = 1e-6
THRESHOLDS = (0.5, 0.75, 0.9)


# ----------------------------------------------------------------------------- references
def ctc_reference(preds, gts, folder: Path) -> dict[str, float]:
    """py-ctcmetrics SEG/DET/OP_CSB of a sequence whose frames are the given images."""
    folder.mkdir(parents=True, exist_ok=True)
    ref_paths, res_paths = [], []
    offset_ref = offset_res = 0
    for t, (pred, gt) in enumerate(zip(preds, gts)):
        # every object is its own one-frame track: ids must be unique over the sequence
        gt = np.where(gt > 0, gt.astype(np.int64) + offset_ref, 0)
        pred = np.where(pred > 0, pred.astype(np.int64) + offset_res, 0)
        assert gt.max() + pred.max() < 65535, "CTC masks are 16-bit"
        ref_paths.append(folder / f"man_track{t:03d}.tif")
        res_paths.append(folder / f"mask{t:03d}.tif")
        tifffile.imwrite(ref_paths[-1], gt.astype(np.uint16))
        tifffile.imwrite(res_paths[-1], pred.astype(np.uint16))
        offset_ref, offset_res = int(gt.max()), int(pred.max())
    match = ctc_eval.match_computed_to_reference_masks
    traj = match([str(p) for p in ref_paths], [str(p) for p in res_paths], threads=1)
    segm = match([str(p) for p in ref_paths], [str(p) for p in res_paths], threads=1)
    # calculate_metrics' DET/SEG path. The track graphs only add edges (for TRA), which DET
    # ignores, and py-ctcmetrics cannot build edges for a one-frame sequence: pass no tracks.
    ops = count_acyclic_graph_correction_operations(
        None, None, traj["labels_ref"], traj["labels_comp"], traj["mapped_ref"], traj["mapped_comp"]
    )
    out = {"DET": det(**ops), "SEG": seg(segm["labels_ref"], segm["ious"])}
    out["OP_CSB"] = op_csb(out["SEG"], out["DET"])
    return {"seg": out["SEG"], "det": out["DET"], "op_csb": out["OP_CSB"]}


def stardist_reference(preds, gts, single: bool) -> dict[str, float]:
    if single:
        stats = stardist_matching.matching(gts[0], preds[0], thresh=THRESHOLDS)
    else:
        stats = stardist_matching.matching_dataset(
            gts, preds, thresh=THRESHOLDS, show_progress=False
        )
    by_t = dict(zip(THRESHOLDS, stats))
    s50 = by_t[0.5]
    return {
        "ap50": by_t[0.5].accuracy,
        "ap75": by_t[0.75].accuracy,
        "ap90": by_t[0.9].accuracy,
        "f1": s50.f1,
        "precision": s50.precision,
        "recall": s50.recall,
        "pq": s50.panoptic_quality,
        "sq": s50.mean_matched_score,
    }


def assert_conforms(preds, gts, tmp_path: Path, ctc: bool = True) -> dict[str, float]:
    ours = instance_scores(preds if len(preds) > 1 else preds[0], gts if len(gts) > 1 else gts[0])
    expected = stardist_reference(preds, gts, single=len(preds) == 1)
    if ctc:
        expected.update(ctc_reference(preds, gts, tmp_path / f"ctc{len(list(tmp_path.iterdir()))}"))
    for key, value in expected.items():
        assert ours[key] == pytest.approx(float(value), abs=TOL), (key, ours[key], value)
    return ours


# ----------------------------------------------------------------------------- perturbations
def merge_touching(gt: np.ndarray, rng, fraction: float = 0.4) -> np.ndarray:
    """Merge pairs of touching cells into one object (at least one pair)."""
    out = gt.copy()
    grown = ndi.grey_dilation(gt, size=3)
    border = (gt > 0) & (grown != gt)
    pairs = sorted({(a, b) for a, b in zip(gt[border].tolist(), grown[border].tolist())})
    for k, (a, b) in enumerate(pairs):
        if (k == 0 or rng.random() < fraction) and (out == a).any() and (out == b).any():
            out[out == b] = a
    return out


def split_cells(gt: np.ndarray, rng, fraction: float = 0.2) -> np.ndarray:
    """Cut cells in two along their vertical centre line."""
    out = gt.astype(np.int64).copy()
    next_id = int(gt.max()) + 1
    for obj, sl in enumerate(ndi.find_objects(gt), start=1):
        if sl is None or rng.random() > fraction:
            continue
        ys, xs = np.nonzero(gt[sl] == obj)
        cut = xs > np.median(xs)
        sub = out[sl]
        sub[ys[cut], xs[cut]] = next_id
        next_id += 1
    return out


def shift_cells(gt: np.ndarray, rng, fraction: float = 0.3, max_shift: int = 4) -> np.ndarray:
    """Move some cells by a few pixels (painted over the background only)."""
    out = gt.copy()
    for obj in np.unique(gt[gt > 0]):
        if rng.random() > fraction:
            continue
        dy, dx = rng.integers(-max_shift, max_shift + 1, 2)
        mask = gt == obj
        out[mask] = 0
        moved = np.roll(mask, (dy, dx), axis=(0, 1))
        out[moved & (out == 0)] = obj
    return out


def drop_cells(gt: np.ndarray, rng, fraction: float = 0.15) -> np.ndarray:
    out = gt.copy()
    for obj in np.unique(gt[gt > 0]):
        if rng.random() < fraction:
            out[out == obj] = 0
    return out


def add_spurious(gt: np.ndarray, rng, n: int = 6, radius: int = 6) -> np.ndarray:
    out = gt.astype(np.int64).copy()
    yy, xx = np.mgrid[: gt.shape[0], : gt.shape[1]]
    next_id = int(gt.max()) + 1
    for _ in range(n):
        cy, cx = rng.integers(0, gt.shape[0]), rng.integers(0, gt.shape[1])
        disk = ((yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2) & (out == 0)
        if disk.any():
            out[disk] = next_id
            next_id += 1
    return out


def erode_cells(gt: np.ndarray, rng) -> np.ndarray:
    """Thinner objects, by 0, 1 or 2 pixels: IoUs spread over 0.5-1, around 0.75 and 0.9."""
    once = ndi.grey_erosion(gt, size=3) == gt
    twice = ndi.grey_erosion(gt, size=5) == gt
    depth = rng.integers(0, 3, int(gt.max()) + 1)[gt]
    keep = (depth == 0) | ((depth == 1) & once) | ((depth == 2) & twice)
    return np.where(keep, gt, 0).astype(gt.dtype)


def everything(gt, rng):
    out = merge_touching(gt, rng)
    out = split_cells(out, rng)
    out = shift_cells(out, rng)
    out = drop_cells(out, rng)
    return add_spurious(out, rng)


PERTURBATIONS = {
    "merged": merge_touching,
    "split": split_cells,
    "shifted": shift_cells,
    "missing": drop_cells,
    "spurious": add_spurious,
    "eroded": erode_cells,
    "all": everything,
}


def load_bbbc039(shared: Path, n: int, crop: int | None = 256) -> list[np.ndarray]:
    files = sorted((shared / "data" / "bbbc039_nuclei" / "labels").glob("*.tif"))
    labels = []
    for f in files:
        lab = tifffile.imread(f)
        if crop:
            lab = lab[:crop, :crop]
        if len(np.unique(lab)) > 5:  # skip the nearly empty ones
            labels.append(lab)
        if len(labels) == n:
            break
    return labels


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("kind", sorted(PERTURBATIONS))
def test_bbbc039_perturbed_single_images(shared, tmp_path, kind):
    rng = np.random.default_rng(0)
    for gt in load_bbbc039(shared, 2):
        pred = PERTURBATIONS[kind](gt, rng)
        ours = assert_conforms([pred], [gt], tmp_path)
        if kind != "eroded":
            assert ours["op_csb"] < 1.0  # the perturbation is visible
        else:
            assert 0 < ours["ap90"] < ours["ap50"]


def test_bbbc039_perturbed_set_aggregates_like_references(shared, tmp_path):
    rng = np.random.default_rng(1)
    gts = load_bbbc039(shared, 4)
    preds = [PERTURBATIONS[k](g, rng) for k, g in zip(["all", "merged", "split", "eroded"], gts)]
    # an empty prediction and an empty ground truth inside the set
    gts.append(gts[0].copy())
    preds.append(np.zeros_like(gts[0]))
    gts.append(np.zeros_like(gts[0]))
    preds.append(add_spurious(np.zeros_like(gts[0]), rng))
    ours = assert_conforms(preds, gts, tmp_path)
    per_image_mean = np.mean([instance_scores(p, g)["seg"] for p, g in zip(preds, gts)])
    assert ours["seg"] != pytest.approx(per_image_mean)  # counts are pooled, not averaged


@pytest.mark.slow
def test_bbbc039_full_images(shared, tmp_path):
    rng = np.random.default_rng(2)
    gts = load_bbbc039(shared, 12, crop=None)
    preds = [everything(g, rng) for g in gts]
    assert_conforms(preds, gts, tmp_path)


def _squares(*boxes, shape=(24, 24), ids=None, dtype=np.int32):
    img = np.zeros(shape, dtype)
    for k, (y0, y1, x0, x1) in enumerate(boxes):
        img[y0:y1, x0:x1] = ids[k] if ids else k + 1
    return img


A, B, C = (1, 7, 1, 7), (10, 16, 10, 16), (2, 8, 15, 22)


def test_empty_prediction(tmp_path):
    gt = _squares(A, B, dtype=np.uint16)
    ours = assert_conforms([np.zeros_like(gt)], [gt], tmp_path)
    assert ours["det"] == 0.0 and ours["ap50"] == 0.0


def test_empty_ground_truth(tmp_path):
    """py-ctcmetrics divides by zero on a sequence without reference objects: only the
    StarDist scores are compared; SEG/DET follow the documented convention."""
    empty = np.zeros((24, 24), np.uint16)
    spurious = _squares(A)
    ours = assert_conforms([spurious], [empty], tmp_path, ctc=False)
    assert (ours["seg"], ours["det"], ours["f1"], ours["pq"]) == (0.0, 0.0, 0.0, 0.0)
    both = assert_conforms([empty], [empty], tmp_path, ctc=False)
    assert both["det"] == 1.0 and both["ap50"] == 0.0  # StarDist: 0 when there is no TP


def test_non_consecutive_ids_and_dtypes(tmp_path):
    gt = _squares(A, B, C, ids=[3, 1000, 40000])
    pred = _squares((1, 7, 2, 7), (10, 16, 10, 13), C, ids=[7, 60, 9], dtype=np.uint16)
    ref = assert_conforms([pred], [gt.astype(np.uint16)], tmp_path)
    for g, p in [(gt, pred.astype(np.int32)), (gt.astype(np.uint16), pred), (gt, pred)]:
        assert instance_scores(p, g) == ref
    relabelled = instance_scores(_squares((1, 7, 2, 7), (10, 16, 10, 13), C), _squares(A, B, C))
    assert relabelled == ref


def test_iou_exactly_half_ties(tmp_path):
    """Two predictions each covering exactly half of a cell (IoU 0.5 each) and one prediction
    covering two half-size cells: StarDist's assignment keeps one TP per star."""
    gt = _squares((0, 4, 0, 8), (10, 14, 0, 4), (10, 14, 4, 8), shape=(16, 16))
    pred = _squares((0, 4, 0, 4), (0, 4, 4, 8), (10, 14, 0, 8), shape=(16, 16))
    ours = assert_conforms([pred], [gt], tmp_path)
    assert ours["ap50"] == pytest.approx(2 / (2 + 1 + 1))


label_images = st.integers(0, 2**16 - 1).map(lambda seed: np.random.default_rng(seed))


def _random_labels(rng, shape=(20, 20)):
    """Random blobs with random, non-consecutive ids."""
    img = np.zeros(shape, np.int32)
    for _ in range(rng.integers(0, 8)):
        y, x = rng.integers(0, shape[0] - 3), rng.integers(0, shape[1] - 3)
        h, w = rng.integers(2, 9, 2)
        img[y : y + h, x : x + w] = rng.integers(1, 500)
    return img


@settings(max_examples=40, deadline=None)
@given(label_images)
def test_random_label_images_match_stardist(rng):
    gt, pred = _random_labels(rng), _random_labels(rng)
    ours = instance_scores(pred, gt)
    expected = stardist_reference([pred], [gt], single=True)
    for key, value in expected.items():
        assert ours[key] == pytest.approx(float(value), abs=TOL), key


@settings(max_examples=15, deadline=None)
@given(label_images)
def test_random_label_sets_match_ctc(tmp_path_factory, rng):
    gts = [_random_labels(rng) for _ in range(3)]
    preds = [_random_labels(rng) for _ in range(3)]
    if sum(int((g > 0).any()) for g in gts) == 0:
        gts[0][:4, :4] = 1
    ours = instance_scores(preds, gts)
    ref = ctc_reference(preds, gts, tmp_path_factory.mktemp("ctc"))
    for key in ("seg", "det", "op_csb"):
        assert ours[key] == pytest.approx(ref[key], abs=TOL), key
