"""A minimal SLURM on one machine, for tests: ``sbatch``, ``srun``, ``sacct`` and
``scontrol requeue`` as submitit and microfm use them.

``python fakeslurm.py install BIN`` writes the four commands into BIN. State lives in
``$FAKESLURM_STATE``. ``sbatch`` runs the batch script in a new session per job (each task of
an array is a job) under a small supervisor that reruns it when the job was requeued, as
SLURM does; ``srun`` starts ``SLURM_NTASKS`` copies of its command with the SLURM variables
of each task and writes their pids to ``<state>/<job>.pids``; ``scontrol requeue`` marks the
job and kills its processes a moment later; ``sacct`` reports the states.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

STATE = Path(os.environ.get("FAKESLURM_STATE", "/tmp/fakeslurm"))
COMMANDS = ("sbatch", "srun", "sacct", "scontrol")


def _job_file(key: str) -> Path:
    return STATE / f"{key}.json"


def _write(key: str, **fields) -> None:
    path = _job_file(key)
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update(fields)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def sbatch(args: list[str]) -> None:
    script = Path(args[-1])
    text = script.read_text()
    opts = dict(re.findall(r"^#SBATCH --([\w-]+)=?(.*)$", text, flags=re.M))
    STATE.mkdir(parents=True, exist_ok=True)
    counter = STATE / "next_id"
    job_id = int(counter.read_text()) if counter.exists() else 4242
    array = opts.get("array")
    count = int(array.split("-")[1].split("%")[0]) + 1 if array else 1
    counter.write_text(str(job_id + count + 1))
    (STATE / f"{job_id}.sbatch").write_text(text)
    nodes = int(opts.get("nodes", 1))
    per_node = int(opts.get("ntasks-per-node", 1))
    for i in range(count):
        key = f"{job_id}_{i}" if array else str(job_id)
        env = {
            **os.environ,
            "SLURM_JOB_ID": str(job_id + 1 + i if array else job_id),
            "SLURM_JOB_NAME": opts.get("job-name", "sbatch"),
            "SLURM_JOB_NUM_NODES": str(nodes),
            "SLURM_NNODES": str(nodes),
            "SLURM_NTASKS_PER_NODE": str(per_node),
            "SLURM_NTASKS": str(nodes * per_node),
            "SLURM_JOB_NODELIST": "localhost",
            "SLURM_NODELIST": "localhost",
            "FAKESLURM_KEY": key,
        }
        if array:
            env.update(SLURM_ARRAY_JOB_ID=str(job_id), SLURM_ARRAY_TASK_ID=str(i))
        _write(key, state="PENDING")
        subprocess.Popen(
            [sys.executable, __file__, "_supervise", key, str(script)],
            env=env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    print(f"Submitted batch job {job_id}")


def _supervise(key: str, script: str) -> None:
    """Runs a job's batch script; runs it again when the job was requeued."""
    restarts = 0
    while True:
        _write(key, state="RUNNING", restarts=restarts)
        env = {**os.environ, "SLURM_RESTART_COUNT": str(restarts)}
        proc = subprocess.Popen(["bash", script], env=env, start_new_session=True)
        _write(key, pgid=proc.pid)
        code = proc.wait()
        flag = STATE / f"{key}.requeue"
        if flag.exists():
            flag.unlink()
            restarts += 1
            continue
        _write(key, state="COMPLETED" if code == 0 else "FAILED", exit_code=code)
        return


def srun(args: list[str]) -> None:
    out = err = None
    while args and args[0].startswith("-"):
        opt = args.pop(0)
        if opt in ("--output", "--error"):
            value = args.pop(0)
            out, err = (value, err) if opt == "--output" else (out, value)
    key = os.environ["FAKESLURM_KEY"]
    ntasks = int(os.environ.get("SLURM_NTASKS", 1))
    per_node = int(os.environ.get("SLURM_NTASKS_PER_NODE", ntasks))

    def expand(pattern: str, task: int) -> str:
        ids = {
            "%A": os.environ.get("SLURM_ARRAY_JOB_ID", ""),
            "%a": os.environ.get("SLURM_ARRAY_TASK_ID", ""),
            "%j": os.environ["SLURM_JOB_ID"],
            "%t": str(task),
        }
        for k, v in ids.items():
            pattern = pattern.replace(k, v)
        return pattern

    procs = []
    for t in range(ntasks):
        env = {
            **os.environ,
            "SLURM_PROCID": str(t),
            "SLURM_LOCALID": str(t % per_node),
            "SLURM_NODEID": str(t // per_node),
            "SLURM_STEP_ID": "0",
        }
        Path(expand(out, t)).parent.mkdir(parents=True, exist_ok=True)
        stdout = open(expand(out, t), "a")  # noqa: SIM115 - closed when the task ends
        stderr = open(expand(err, t), "a") if err else subprocess.STDOUT  # noqa: SIM115
        procs.append(subprocess.Popen(args, env=env, stdout=stdout, stderr=stderr))
    (STATE / f"{key}.pids").write_text(" ".join(str(p.pid) for p in procs))
    codes = [p.wait() for p in procs]
    sys.exit(max(abs(c) for c in codes))


def scontrol(args: list[str]) -> None:
    assert args[0] == "requeue", args
    key = args[1]
    (STATE / f"{key}.requeue").write_text("1")
    pgid = json.loads(_job_file(key).read_text())["pgid"]
    # like SLURM: the job is killed shortly after the request, the caller returns at once
    subprocess.Popen(
        [sys.executable, __file__, "_kill_later", str(pgid)],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _kill_later(pgid: str) -> None:
    time.sleep(2.0)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(int(pgid), signal.SIGKILL)


def sacct(args: list[str]) -> None:
    wanted = [args[i + 1] for i, a in enumerate(args) if a == "-j"]
    print("JobID|State|NodeList")
    for path in sorted(STATE.glob("*.json")):
        key = path.stem
        if any(key == w or key.startswith(f"{w}_") for w in wanted):
            print(f"{key}|{json.loads(path.read_text())['state']}|localhost")


def install(bin_dir: str) -> None:
    bin_path = Path(bin_dir)
    bin_path.mkdir(parents=True, exist_ok=True)
    for name in COMMANDS:
        shim = bin_path / name
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{__file__}" {name} "$@"\n')
        shim.chmod(0o755)


if __name__ == "__main__":
    command, rest = sys.argv[1], sys.argv[2:]
    {
        "sbatch": sbatch,
        "srun": srun,
        "sacct": sacct,
        "scontrol": scontrol,
        "install": lambda a: install(a[0]),
        "_supervise": lambda a: _supervise(*a),
        "_kill_later": lambda a: _kill_later(*a),
    }[command](rest)
