"""cluster=slurm without a cluster: config invariants, site settings kept out of the repository,
the rendered sbatch script against a golden file, and Lightning's view of a faked SLURM job."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from lightning.fabric.plugins.environments import SLURMEnvironment

from microfm.cli.slurm_preview import preview
from microfm.distributed.checks import check_launch, check_launcher_config
from microfm.distributed.environment import cluster_environment, current_launch
from microfm.errors import ConfigError
from microfm.run.build import build_trainer
from microfm.run.config import config_dir, register_resolvers

GOLDEN = Path(__file__).parent / "golden" / "slurm_sweep.sbatch"


def full_config(overrides):
    """The composed config with its hydra node, as the SLURM launcher sees a job."""
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    GlobalHydra.instance().clear()
    return cfg


@pytest.mark.parametrize("devices,nodes", [(1, 1), (4, 1), (8, 2), (2, 16)])
def test_slurm_config_is_one_task_per_gpu(devices, nodes):
    overrides = [f"trainer.devices={devices}", f"trainer.num_nodes={nodes}", "data.batch_size=64"]
    cfg = full_config(["cluster=slurm", *overrides])
    launcher = cfg.hydra.launcher
    assert launcher.tasks_per_node == launcher.gpus_per_node == cfg.trainer.devices == devices
    assert launcher.nodes == cfg.trainer.num_nodes == nodes
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.accelerator == "gpu"
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"  # never trains on the login node
    assert cfg.resume == "auto"  # a requeued job continues from its last checkpoint
    # submitit signals (USR2) well before the time limit and may requeue after time-outs
    assert 60 <= launcher.signal_delay_s < 60 * launcher.timeout_min
    assert launcher.max_num_timeout > 0
    assert launcher._target_.startswith("hydra_plugins.microfm_launchers.")
    check_launcher_config(cfg, "slurm")


def site_settings(node, where=""):
    """(key, value) of every partition/account/qos set in a YAML tree."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("partition", "account", "qos"):
                yield f"{where}{key}", value
            yield from site_settings(value, f"{where}{key}.")


def test_no_site_settings_in_the_repository():
    for path in config_dir().rglob("*.yaml"):
        if "local" in path.relative_to(config_dir()).parts:
            continue
        for key, value in site_settings(yaml.safe_load(path.read_text()) or {}):
            ok = value is None or str(value).startswith("${slurm.")
            assert ok, f"{path}: {key}={value} is a site setting (conf/local/default.yaml)"
    cfg = full_config(["cluster=slurm"])
    assert cfg.hydra.launcher.partition is None and cfg.hydra.launcher.account is None
    assert cfg.hydra.launcher.setup is None


def test_site_file_is_git_ignored_and_the_example_composes(tmp_path):
    repo = config_dir().parent
    if shutil.which("git") and (repo / ".git").exists():
        out = subprocess.run(
            ["git", "-C", str(repo), "check-ignore", "conf/local/default.yaml"],
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, "conf/local/default.yaml must be git-ignored"
    example = config_dir() / "local" / "default.yaml.example"
    site = tmp_path / "local"
    site.mkdir()
    shutil.copy(example, site / "default.yaml")
    cfg = full_config(["cluster=slurm", f"hydra.searchpath=[file://{tmp_path}]"])
    assert cfg.hydra.launcher.partition == "gpu"
    assert cfg.hydra.launcher.account == "my_project"
    assert cfg.hydra.launcher.setup[0].startswith("module load")
    # the same site file is harmless without a cluster
    cfg = full_config([f"hydra.searchpath=[file://{tmp_path}]"])
    assert cfg.slurm.partition == "gpu"


@pytest.mark.parametrize(
    "override,match",
    [
        ("hydra.launcher.tasks_per_node=2", "hydra.launcher.tasks_per_node=2"),
        ("hydra.launcher.gpus_per_node=8", "hydra.launcher.gpus_per_node=8"),
        ("hydra.launcher.nodes=3", "hydra.launcher.nodes=3"),
        ("trainer.strategy=ddp_spawn", "trainer.strategy=ddp_spawn"),
        ("data.batch_size=6", "data.batch_size=6"),
        ("trainer.devices=auto", "trainer.devices"),
    ],
)
def test_layout_errors_are_caught_before_submission(override, match):
    cfg = full_config(["cluster=slurm", "trainer.devices=4", override])
    with pytest.raises(ConfigError, match=match):
        check_launcher_config(cfg, "slurm")


def normalise(text: str, tmp_path: Path) -> str:
    return text.replace(sys.executable, "<python>").replace(str(tmp_path), "<results>")


def test_sbatch_script_matches_golden_file(tmp_path):
    script, jobs = preview(
        [
            "cluster=slurm",
            "trainer.devices=4",
            "trainer.num_nodes=2",
            "finetune.lora.r=4,8,16",
            "optim.lr=1e-4,3e-4",
            "slurm.partition=gpu",
            "slurm.account=my_project",
            "slurm.cpus_per_task=8",
            "slurm.mem_gb=64",
            "slurm.setup=['module load cuda/12.4','source ~/venvs/microfm/bin/activate']",
            f"results_root={tmp_path}",
        ]
    )
    assert len(jobs) == 6
    assert normalise(script, tmp_path) == GOLDEN.read_text()
    for line in (
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --signal=USR2@120",
        "#SBATCH --array=0-5%6",
    ):
        assert line in script
    assert not (tmp_path / "seg").exists()  # nothing submitted, nothing written


def test_preview_shows_the_resolved_launcher(tmp_path):
    text, jobs = preview(["trainer.devices=4", f"results_root={tmp_path}"], launcher=True)
    node = yaml.safe_load(text)
    assert len(jobs) == 1 and node["tasks_per_node"] == node["gpus_per_node"] == 4
    assert node["submitit_folder"] == f"{tmp_path}/seg/.submitit/%j"


def test_preview_refuses_a_bad_layout(tmp_path):
    with pytest.raises(ConfigError, match="trainer.num_nodes"):
        preview(["trainer.num_nodes=2", "hydra.launcher.nodes=1", f"results_root={tmp_path}"])


def fake_slurm_task(monkeypatch, rank, nodes=2, tasks_per_node=2, job_id="4321987"):
    env = {
        "SLURM_JOB_ID": job_id,
        "SLURM_JOB_NAME": "train",
        "SLURM_NTASKS": str(nodes * tasks_per_node),
        "SLURM_NTASKS_PER_NODE": str(tasks_per_node),
        "SLURM_NNODES": str(nodes),
        "SLURM_JOB_NUM_NODES": str(nodes),
        "SLURM_NODELIST": "gpu-node[07-08]",
        "SLURM_JOB_NODELIST": "gpu-node[07-08]",
        "SLURM_PROCID": str(rank),
        "SLURM_LOCALID": str(rank % tasks_per_node),
        "SLURM_NODEID": str(rank // tasks_per_node),
        "SUBMITIT_EXECUTOR": "slurm",
    }
    for key in ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.setenv(key, "x")
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)


@pytest.mark.parametrize("rank", [0, 1, 2, 3])
def test_lightning_sees_a_two_node_slurm_job(monkeypatch, rank, tmp_path):
    fake_slurm_task(monkeypatch, rank)
    cfg = full_config(
        [
            "cluster=slurm",
            "backbone=vit_test",
            "trainer.devices=2",
            "trainer.num_nodes=2",
            "trainer.accelerator=cpu",
            f"results_root={tmp_path}",
        ]
    )
    launch = current_launch()
    assert (launch.world_size, launch.num_nodes, launch.global_rank) == (4, 2, rank)
    check_launch(cfg, launch)
    env = cluster_environment()
    assert isinstance(env, SLURMEnvironment) and not env.auto_requeue  # submitit requeues
    trainer = build_trainer(cfg, callbacks=[], logger=None, plugins=[env])
    assert trainer.strategy.cluster_environment is env
    # Lightning's launcher only starts processes when the environment does not
    launcher = trainer.strategy.launcher
    assert launcher is None or launcher.cluster_environment.creates_processes_externally
    env.validate_settings(num_devices=2, num_nodes=2)  # what Lightning checks at launch
    assert trainer.world_size == 4 and trainer.num_nodes == 2
    assert (trainer.global_rank, trainer.local_rank, trainer.node_rank) == (
        rank,
        rank % 2,
        rank // 2,
    )
    assert env.main_address == "gpu-node07"
    assert env.main_port == 15000 + 1987  # the same on every rank: derived from the job id


def test_a_job_laid_out_differently_from_the_trainer_fails_clearly(monkeypatch, tmp_path):
    fake_slurm_task(monkeypatch, rank=0, nodes=1, tasks_per_node=4)
    cfg = full_config(["cluster=slurm", "trainer.devices=2", f"results_root={tmp_path}"])
    with pytest.raises(ConfigError, match=r"started 4 tasks .* trainer.devices=2"):
        check_launch(cfg, current_launch())


def test_lightning_would_respawn_a_sweep_without_launcher(tmp_path):
    cfg = full_config(["trainer.devices=2", f"results_root={tmp_path}"])
    check_launch(cfg, None)  # a single run on one machine: Lightning starts its processes
    with pytest.raises(ConfigError, match="cluster=local"):
        check_launch(cfg, None, multirun=True)


@pytest.mark.slow
def test_wheel_ships_the_launchers_and_the_preview(tmp_path):
    """Hydra instantiates launchers only from the hydra_plugins namespace: the wheel must
    carry microfm's there, next to the console script of the preview."""
    import zipfile

    repo = config_dir().parent
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(repo)],
        check=True,
    )
    wheel = zipfile.ZipFile(next(tmp_path.glob("microfm-*.whl")))
    names = wheel.namelist()
    assert "hydra_plugins/microfm_launchers/launchers.py" in names
    assert "hydra_plugins/__init__.py" not in names  # a namespace shared with other plugins
    assert "microfm/conf/cluster/slurm.yaml" in names
    assert "microfm/conf/hydra/launcher/microfm_slurm.yaml" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert (
        "microfm-slurm-preview = microfm.cli.slurm_preview:main"
        in wheel.read(entry_points).decode()
    )
