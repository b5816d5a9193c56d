"""The grid through a real single-node SLURM (Debian's slurmctld/slurmd/munge) and the Snakemake SLURM executor.

Needs root and apt (CI has both); installs the daemons when missing, starts them on localhost with one stand-in
GPU cut into 80 shards, runs a 4-cell tiny grid with `--executor slurm` and the SLURM profile, checks the records
and that the cells asked for GPU shards and ran side by side on the one GPU, and stops the daemons by PID.
See ../shared/CLUSTER.md for the two traps handled here: the config must be /etc/slurm/slurm.conf, and
without accounting the plugin must poll squeue (`--slurm-status-command squeue --slurm-no-account`).
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from bench.harness.tasks import data_root

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]

pytestmark = pytest.mark.slurm


def _install() -> None:
    if all(shutil.which(b) for b in ("slurmctld", "slurmd", "sinfo", "munged")):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("SLURM is not installed and this user cannot apt-get it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True, timeout=300)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES],
        check=True,
        env=env,
        capture_output=True,
        timeout=600,
    )


def _config(state: Path) -> str:
    host = socket.gethostname()
    return "\n".join(
        [
            "ClusterName=peftrepro",
            f"SlurmctldHost={host}",
            "AuthType=auth/munge",
            "SlurmUser=root",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "MpiDefault=none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            f"StateSaveLocation={state}/ctld",
            f"SlurmdSpoolDir={state}/d",
            f"SlurmctldPidFile={state}/ctld.pid",
            f"SlurmdPidFile={state}/d.pid",
            f"SlurmctldLogFile={state}/ctld.log",
            f"SlurmdLogFile={state}/d.log",
            "ReturnToService=2",
            "GresTypes=gpu,shard",
            f"NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory=16000 Gres=gpu:1,shard:80 "
            "State=UNKNOWN",
            f"PartitionName=main Nodes={host} Default=YES MaxTime=INFINITE State=UP",
            "",
        ]
    )


@pytest.fixture()
def slurm(tmp_path):
    _install()
    state = tmp_path / "slurm"
    for sub in ("ctld", "d"):
        (state / sub).mkdir(parents=True)
    conf = Path("/etc/slurm/slurm.conf")  # the plugin's job step drops SLURM_CONF: only this path works
    conf.parent.mkdir(parents=True, exist_ok=True)
    backup = conf.read_text() if conf.exists() else None
    conf.write_text(_config(state))
    gres = conf.with_name("gres.conf")  # a stand-in GPU (/dev/null) in 80 shards: SLURM counts and allocates them
    gres_backup = gres.read_text() if gres.exists() else None
    gres.write_text(
        f"NodeName={socket.gethostname()} Name=gpu File=/dev/null\n"
        f"NodeName={socket.gethostname()} Name=shard Count=80 File=/dev/null\n"
    )
    Path("/run/munge").mkdir(exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    pids = []
    try:
        munged = subprocess.Popen(["runuser", "-u", "munge", "--", "munged", "-F"], start_new_session=True)
        pids.append(munged.pid)
        time.sleep(1)
        for daemon in ("slurmctld", "slurmd"):
            pids.append(
                subprocess.Popen(
                    [daemon, "-D"], start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                ).pid
            )
            time.sleep(2)
        for _ in range(60):
            states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout.split()
            if "idle" in states:
                break
            time.sleep(1)
        else:
            pytest.fail(f"SLURM node never became idle: sinfo says {states}; logs in {state}")
        yield state
    finally:
        for pid in reversed(pids):
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for path, text in ((conf, backup), (gres, gres_backup)):
            if text is None:
                path.unlink(missing_ok=True)
            else:
                path.write_text(text)


def _job_intervals(ctld_log: str) -> dict[str, list[datetime]]:
    """JobId -> [allocated, completed] from slurmctld's log (no accounting needed). A job starts either from the
    main scheduler ("sched: Allocate JobId=3") or, on a busy machine, from the backfill scheduler
    ("sched/backfill: _start_job: Started JobId=3 in main on host"; older Slurm logs no prefix)."""
    jobs: dict[str, list[datetime]] = {}
    for stamp, job in re.findall(
        r"^\[([\d\-T:.]+)\] [^\n]*?(?:sched: Allocate|Started|_job_complete:) JobId=(\d+)(?! "
        r"WEXIT)",
        ctld_log,
        flags=re.M,
    ):
        jobs.setdefault(job, []).append(datetime.fromisoformat(stamp))
    return jobs


def test_job_intervals_read_both_schedulers_starts():
    """The CI run of 2026-12-01 failed here: two cells started from the backfill scheduler and had no start."""
    log = "\n".join(
        [
            "[2026-12-01T05:29:01.433] sched: Allocate JobId=1 NodeList=n #CPUs=1 Partition=main",
            "[2026-12-01T05:29:22.632] _job_complete: JobId=1 WEXITSTATUS 0",
            "[2026-12-01T05:29:22.632] _job_complete: JobId=1 done",
            "[2026-12-01T05:29:43.467] sched/backfill: _start_job: Started JobId=3 in main on n",
            "[2026-12-01T05:29:44.001] Started JobId=4 in main on n",
            "[2026-12-01T05:30:10.100] _job_complete: JobId=3 WEXITSTATUS 0",
            "[2026-12-01T05:30:10.100] _job_complete: JobId=3 done",
            "[2026-12-01T05:30:11.000] _job_complete: JobId=4 done",
            "",
        ]
    )
    jobs = _job_intervals(log)
    assert {job: [t.isoformat(timespec="milliseconds") for t in times] for job, times in jobs.items()} == {
        "1": ["2026-12-01T05:29:01.433", "2026-12-01T05:29:22.632"],
        "3": ["2026-12-01T05:29:43.467", "2026-12-01T05:30:10.100"],
        "4": ["2026-12-01T05:29:44.001", "2026-12-01T05:30:11.000"],
    }


def test_grid_shares_a_gpu_through_slurm(slurm, models_cache, tmp_path):
    """Four tiny cells, each estimated far below half a GPU, ask for GPU shards (not a GPU each) and run side by
    side on the node's one GPU; every record ok."""
    pytest.importorskip(
        "snakemake_executor_plugin_slurm", reason="install config/requirements.lock (it holds the cluster extra)"
    )
    work = tmp_path / "work"
    work.mkdir()
    grid = yaml.safe_load((REPO / "config/grids/tiny.yaml").read_text())
    grid["seeds"] = [0, 1]
    (work / "shared.yaml").write_text(yaml.safe_dump(grid))
    env = {**os.environ, "PEFT_REPRO_MODELS": str(models_cache), "PEFT_REPRO_DATA": str(data_root())}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--snakefile",
            str(REPO / "Snakefile"),
            "--directory",
            str(work),
            "--workflow-profile",
            str(REPO / "profiles/slurm"),
            "--jobs",
            "4",
            "--config",
            f"grid={work / 'shared.yaml'}",
            "--slurm-status-command",
            "squeue",
            "--slurm-no-account",
            "--slurm-init-seconds-before-status-checks",
            "5",
            "--default-resources",
            "slurm_partition=main",
            "--verbose",
        ],  # verbose: the sbatch calls
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    records = sorted(work.glob("results/shared/**/record.json"))
    assert len(records) == 4
    for path in records:
        record = json.loads(path.read_text())
        assert record["status"] == "ok" and set(record["metrics"]) == {"sst2", "imdb"}
    assert (work / "reports/shared/README.md").exists()
    calls = [
        line for line in (done.stdout + done.stderr).splitlines() if "sbatch call:" in line and "rule_cell" in line
    ]
    assert len(calls) == 4, calls
    for call in calls:  # a shard of the GPU, not a GPU each
        assert "--gres=shard:1" in call and "--gpus" not in call, call
    jobs = _job_intervals((slurm / "ctld.log").read_text())
    assert len(jobs) >= 5 and all(len(v) == 2 for v in jobs.values()), jobs  # 4 cells + the report (+ the model)
    # cells ran at the same time on the node's one GPU (prepare_model runs before them, the report after)
    overlapping = [(a, b) for a in jobs for b in jobs if a < b and jobs[a][0] < jobs[b][1] and jobs[b][0] < jobs[a][1]]
    assert overlapping, jobs
