"""Config composition: every option of every group, struct mode, task defaults, packaging."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from microfm.run.config import compose, config_dir

CONF = config_dir()
# groups of other entry points (microfm-features/-analyze), composed by their own tests
OTHER_ENTRY_GROUPS = {"analysis", "extract"}
GROUPS = sorted(
    p.name
    for p in CONF.iterdir()
    if p.is_dir() and p.name != "local" and p.name not in OTHER_ENTRY_GROUPS
)


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_expected_groups_exist():
    expected = {
        "backbone",
        "task",
        "data",
        "augment",
        "finetune",
        "optim",
        "trainer",
        "logger",
        "callbacks",
        "paths",
        "experiment",
        "debug",
    }
    assert expected <= set(GROUPS)
    for group in expected:
        assert _options(group), f"conf/{group}/ has no options"


@pytest.mark.parametrize(
    "group,option", [(g, o) for g in GROUPS for o in _options(g)], ids=lambda v: str(v)
)
def test_every_option_composes_and_resolves(group, option, tmp_path):
    cfg = compose([f"{group}={option}", f"results_root={tmp_path}"])
    # Resolving checks every interpolation (cross-group references, resolvers).
    container = OmegaConf.to_container(cfg, resolve=True)
    assert container["task_type"] not in (None, "???")
    assert container["run_dir"].startswith(str(tmp_path))


def test_config_found_from_another_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert (config_dir() / "train.yaml").is_file()
    assert compose([]).backbone.name == "dinov3_vits16"


def test_struct_mode_rejects_unknown_key():
    with pytest.raises(ConfigCompositionException, match="trainer.max_epoch"):
        compose(["trainer.max_epoch=3"])


def test_misspelled_group_option_is_named():
    with pytest.raises(ConfigCompositionException, match="dinov3_vits61"):
        compose(["backbone=dinov3_vits61"])


def test_task_chooses_defaults_and_command_line_wins():
    cfg = compose([])
    assert cfg.finetune.mode == "lora"  # chosen by task/cellseg.yaml
    assert cfg.augment.invert == 0.5
    cfg = compose(["finetune=frozen", "augment=none"])
    assert cfg.finetune.mode == "frozen"
    assert cfg.augment.invert == 0.0


def test_cross_group_interpolations():
    cfg = compose(["backbone=vit_test"])
    assert cfg.task.head.embed_dim == 64
    assert cfg.task.head.num_layers == len(cfg.backbone.intermediate_layers)
    assert cfg.backbone.in_chans == cfg.data.in_chans
    assert cfg.callbacks.checkpoint.monitor == "val/cellseg/op_csb"


def test_results_layout_keys(tmp_path):
    cfg = compose([f"results_root={tmp_path}", "experiment_id=abc"])
    assert cfg.run_dir == f"{tmp_path}/seg/abc"
    default_id = compose([]).experiment_id
    assert "cellseg" in default_id and "dinov3_vits16" in default_id


@pytest.mark.slow
def test_wheel_bundles_configs(tmp_path):
    """A non-editable install carries conf/ as microfm/conf, where config_dir() finds it."""
    repo = Path(__file__).resolve().parent.parent
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(repo)],
        check=True,
    )
    wheel = next(tmp_path.glob("microfm-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "microfm/conf/train.yaml" in names
    assert "microfm/conf/backbone/dinov3_vits16.yaml" in names
    assert not any(n.startswith("microfm/conf/local/") and n.endswith(".yaml") for n in names)
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    out = subprocess.run(
        [sys.executable, "-c", "from microfm.run.config import config_dir; print(config_dir())"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(out.stdout.strip()) == target / "microfm" / "conf"


def test_composing_a_config_imports_neither_torch_nor_lightning(tmp_path):
    """The class-name resolver reads the dataset folder without the DataModules, so config
    composition (and a features-cache hit) stays fast."""
    (tmp_path / "G1").mkdir()
    (tmp_path / "G2").mkdir()
    for cls in ("G1", "G2"):
        (tmp_path / cls / "a.png").write_bytes(b"")
    code = (
        "import sys\n"
        "from microfm.run.config import compose\n"
        f"cfg = compose(['task=classify', 'data=classification', 'data.root={tmp_path}'])\n"
        "assert list(cfg.data.class_names) == ['G1', 'G2'], cfg.data.class_names\n"
        "assert cfg.data.num_classes == 2\n"
        "print(sorted(m for m in ('torch', 'lightning') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1]
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
