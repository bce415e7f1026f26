"""microfm-analyze end to end: every analysis config composes; the numbers it reports are
recomputed from features.npz alone; several features files are domains; errors name keys;
the console scripts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from microfm.analysis import (
    FeatureSet,
    concat,
    domain_separability,
    fit_gaussian,
    frechet_bootstrap,
    frechet_features,
    knn_classify,
    knn_distance_scores,
    linear_probe,
    mahalanobis_scores,
    ood_metrics,
    pca,
    retrieval_scores,
    stratified_split,
    train_test_indices,
)
from microfm.errors import ConfigError
from microfm.run.analyze import analyze
from microfm.run.config import compose, config_dir
from microfm.run.features import features

ANALYSES = sorted(p.stem for p in (config_dir() / "analysis").glob("*.yaml"))
DATA = ["data.image_size=32", "data.n_train=24", "data.n_val=8", "data.n_test=16"]


def _base(tmp_path, *extra: str) -> list[str]:
    return [
        "backbone=vit_test", *DATA, f"results_root={tmp_path / 'results'}",
        f"extract.cache_dir={tmp_path / 'cache'}", "extract.progress=false",
        "extract.num_workers=0", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("name", ANALYSES)
def test_every_analysis_composes_and_resolves(name, tmp_path):
    cfg = compose([f"analysis={name}", f"results_root={tmp_path}"], config_name="analyze")
    container = OmegaConf.to_container(cfg, resolve=True)
    assert container["analysis"]["name"] == name
    assert container["run_dir"].startswith(str(tmp_path / "analysis"))
    from microfm.run.build import build

    assert build(cfg.analysis, "analysis").name == name


def test_expected_analyses_exist():
    expected = {"pca", "umap", "pca_rgb", "knn", "linear_probe", "ood", "frechet", "retrieval"}
    assert set(ANALYSES) == expected


def _run(tmp_path, name: str, *extra: str) -> tuple[dict, Path]:
    cfg = compose(
        [*_base(tmp_path, f"analysis={name}", f"experiment_id={name}"), *extra], "analyze"
    )
    return analyze(cfg), Path(cfg.run_dir)


def test_label_analyses_are_recomputed_from_features_npz(tmp_path):
    knn, run = _run(tmp_path, "knn")
    fs = FeatureSet.load(run / "features.npz")
    assert len(fs) == 48 and knn["features/cached"] is False
    x, y = fs.feature("cls"), fs.labels
    fit, test = train_test_indices(fs.splits, y, "auto")
    ref = knn_classify(x[fit], y[fit], x[test], y[test], k=20, temperature=0.07)
    for m in ("accuracy", "balanced_accuracy", "macro_f1"):
        assert knn[f"knn/cls/{m}"] == ref[m]
    assert json.loads((run / "metrics.json").read_text())["knn/cls/accuracy"] == ref["accuracy"]
    assert (run / "figs" / "knn_confusion.png").is_file()

    probe, run = _run(tmp_path, "linear_probe", "analysis.feature=cls+mean_patch")
    fs = FeatureSet.load(run / "features.npz")
    assert probe["features/cached"] is True  # same extraction as the k-NN run
    x = fs.feature("cls+mean_patch")
    tr, va, te = (np.flatnonzero(fs.splits == s) for s in ("train", "val", "test"))
    r = linear_probe(x[tr], y[tr], x[te], y[te], x[va], y[va], cs=[1e-3, 1e-2, 0.1, 1, 10, 100])
    for m in ("accuracy", "balanced_accuracy", "macro_f1", "C"):
        assert probe[f"linear_probe/cls+mean_patch/{m}"] == r[m]

    ret, run = _run(tmp_path, "retrieval", "analysis.feature=mean_patch")
    fs = FeatureSet.load(run / "features.npz")
    ref = retrieval_scores(fs.feature("mean_patch"), fs.labels, ks=[1, 5, 10])
    for m, v in ref.items():
        assert ret[f"retrieval/mean_patch/{m}"] == v
    assert (run / "figs" / "retrieval.png").is_file()

    emb, run = _run(tmp_path, "pca", "analysis.feature=mean_patch")
    fs = FeatureSet.load(run / "features.npz")
    ratio = pca(fs.feature("mean_patch"), 48)["explained_variance_ratio"]  # min(spectrum, N)
    assert emb["pca/mean_patch/explained_variance_1"] == ratio[0]
    assert emb["pca/mean_patch/explained_variance_2"] == ratio[1]
    assert (run / "figs" / "pca.html").is_file()


def test_domain_analyses_on_two_features_files_are_recomputed(tmp_path):
    paths = []
    for tag, extra in (("bright", []), ("dim", ["data.photons=[20.0,40.0]", "data.seed=5"])):
        over = _base(tmp_path, f"experiment_id={tag}", f"dataset_name={tag}", *extra)
        features(compose(over, config_name="features"))
        paths.append(str(tmp_path / "results" / "features" / tag / "features.npz"))
    files = f"features=[{paths[0]},{paths[1]}]"
    fd, run = _run(
        tmp_path, "frechet", files, "analysis.feature=mean_patch", "analysis.n_bootstrap=20"
    )
    fs = concat([FeatureSet.load(p) for p in paths], ["bright", "dim"])
    a = fs.feature("mean_patch")[fs.domains == 0]
    b = fs.feature("mean_patch")[fs.domains == 1]
    assert fd["frechet/mean_patch/fd"] == frechet_features(a, b)
    lo, hi, _ = frechet_bootstrap(a, b, n=20, level=0.95, seed=0)
    assert (fd["frechet/mean_patch/fd_ci_low"], fd["frechet/mean_patch/fd_ci_high"]) == (lo, hi)
    sep = domain_separability(a, b, n_components=50, folds=5, seed=0)
    assert fd["frechet/mean_patch/separability_auroc"] == sep["auroc"]
    assert fd["features/files"] == paths and not (run / "features.npz").exists()

    ood, _ = _run(tmp_path, "ood", files, "analysis.reference=dim", "analysis.shrinkage=oas")
    x = fs.feature("cls")
    inside = np.flatnonzero(fs.domains == 1)
    fit, test = inside[fs.splits[inside] != "test"], inside[fs.splits[inside] == "test"]
    out = np.flatnonzero(fs.domains == 0)
    m = ood_metrics(
        mahalanobis_scores(x[fit], x[test], "oas"), mahalanobis_scores(x[fit], x[out], "oas")
    )
    assert ood["ood/cls/mahalanobis_auroc"] == m["auroc"]
    assert ood["ood/cls/mahalanobis_fpr95"] == m["fpr95"]
    k = ood_metrics(
        knn_distance_scores(x[fit], x[test], 10), knn_distance_scores(x[fit], x[out], 10)
    )
    assert ood["ood/cls/knn_auroc"] == k["auroc"]
    assert ood["ood/cls/shrinkage"] == fit_gaussian(x[fit], "oas")[2]


def test_ood_by_held_out_classes_and_random_split(tmp_path):
    ood, run = _run(tmp_path, "ood", "analysis.ood_classes=[lobed]", "extract.splits=[train]")
    fs = FeatureSet.load(run / "features.npz")
    x, out = fs.feature("cls"), fs.labels == 2
    inside = np.flatnonzero(~out)
    keep, held = stratified_split(np.zeros(len(inside)), 0.3, 0)
    s_in = mahalanobis_scores(x[inside[keep]], x[inside[held]])
    s_out = mahalanobis_scores(x[inside[keep]], x[out])
    assert ood["ood/cls/mahalanobis_auroc"] == ood_metrics(s_in, s_out)["auroc"]


def test_pca_rgb_extracts_patch_tokens_itself(tmp_path):
    m, run = _run(tmp_path, "pca_rgb", "analysis.n_images=4")
    fs = FeatureSet.load(run / "features.npz")
    assert "patch" in fs.arrays and len(fs) == 12  # 4 images of each split
    assert m["pca_rgb/patch/n_images"] == 4
    assert (run / "figs" / "pca_rgb.png").is_file() and (run / "pca_rgb_basis.npz").is_file()


def test_user_errors_name_the_problem(tmp_path):
    unlabelled = FeatureSet({"cls": np.random.default_rng(0).normal(size=(10, 4))})
    unlabelled.save(tmp_path / "u.npz")
    with pytest.raises(ConfigError, match="needs class labels"):
        _run(tmp_path, "knn", f"features={tmp_path / 'u.npz'}")
    with pytest.raises(ConfigError, match="needs images of 2 domains"):
        _run(tmp_path, "frechet")
    with pytest.raises(ConfigError, match="analysis.kk is not a parameter"):
        cfg = compose(_base(tmp_path, "analysis=knn", "+analysis.kk=3"), "analyze")
        analyze(cfg)


@pytest.mark.slow
def test_console_scripts(tmp_path):
    """microfm-features writes features.npz; microfm-analyze reports a user error with exit
    status 2 (the successful analyses run in-process above)."""
    exe = Path(sys.executable).parent
    over = _base(tmp_path, "experiment_id=cli")
    out = subprocess.run(
        [exe / "microfm-features", *over], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr
    npz = tmp_path / "results" / "features" / "cli" / "features.npz"
    assert npz.is_file() and "48 images" in out.stdout
    bad = subprocess.run(
        [exe / "microfm-analyze", "analysis=frechet", f"features={npz}", *over],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert bad.returncode == 2 and "needs images of 2 domains" in bad.stderr
