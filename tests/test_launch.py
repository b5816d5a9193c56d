"""bench/launch: a job run through the fork server is the job run plainly, only faster to start."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.tools import launch

REPO = Path(__file__).resolve().parent.parent
CELL = [
    "-m",
    "bench",
    "run-cell",
    "--grid",
    "t",
    "--task",
    "rte",
    "--model",
    "tiny-t5",
    "--method",
    "prompt_tuning",
    "--train-size",
    "8",
    "--seed",
    "0",
    "--hp",
    "steps=2",
    "--hp",
    "batch_size=4",
    "--hp",
    "num_virtual_tokens=4",
    "--eval-limit",
    "4",
    "--threads",
    "1",
]
# how long it took and how much memory the process held: a forked child skips the imports' peak RSS
MEASURED = {
    "train_s",
    "train_tokens_per_s",
    "train_flops_per_s",
    "mfu",
    "eval_s",
    "eval_tokens_per_s",
    "peak_mem_bytes",
    "matmul_peak_flops",
}


@pytest.fixture()
def server(tmp_path, models_cache):
    path = str(tmp_path / "fork.sock")
    process = launch.start(path)
    assert process is not None
    yield path
    process.terminate()
    process.wait(timeout=30)
    assert not os.path.exists(path)  # the server removes its socket when it ends


def _run(argv, env, cwd, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "bench.tools.launch", "run", *argv],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        **kwargs,
    )


def test_a_cell_forked_writes_the_record_a_plain_run_writes(server, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    plain = subprocess.run(
        [sys.executable, *CELL, "--out", str(tmp_path / "plain")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert plain.returncode == 0, plain.stderr[-2000:]
    forked = _run([*CELL, "--out", "forked"], {**env, launch.SOCKET_ENV: server}, tmp_path)  # a relative --out: cwd
    assert forked.returncode == 0, forked.stderr[-2000:]
    assert forked.stdout.startswith("ok: forked/record.json")  # the child's stdout is the client's
    records = [json.loads((tmp_path / name / "record.json").read_text()) for name in ("plain", "forked")]
    for record in records:
        record["cost"] = {k: v for k, v in record["cost"].items() if k not in MEASURED}
    assert records[0] == records[1]
    assert records[0]["train"]["losses"] and records[0]["metrics"]["rte"]["n"] == 4


def test_exit_status_and_errors_pass_through(server, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for argv in (
        ["-m", "bench", "run-cell", "--task"],
        [
            "-m",
            "bench",
            "run-cell",
            "--grid",
            "t",
            "--task",
            "nope",
            "--model",
            "tiny-t5",
            "--method",
            "lora",
            "--out",
            "x",
        ],
    ):
        plain = subprocess.run([sys.executable, *argv], env=env, cwd=tmp_path, capture_output=True, text=True)
        forked = _run(argv, {**env, launch.SOCKET_ENV: server}, tmp_path)
        assert plain.returncode != 0
        assert (forked.returncode, forked.stderr.splitlines()[-1]) == (plain.returncode, plain.stderr.splitlines()[-1])


def test_without_a_server_the_client_runs_the_command_itself(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), launch.SOCKET_ENV: str(tmp_path / "none.sock")}
    done = _run(["-m", "bench", "methods"], env, tmp_path)
    assert done.returncode == 0 and "prompt_tuning" in done.stdout


def test_a_server_that_cannot_start_leaves_plain_processes(tmp_path, models_cache, capfd):
    assert launch.start(str(tmp_path / "no such folder" / "fork.sock")) is None  # it cannot bind there
    assert "warning: the fork server did not start" in capfd.readouterr().err


def test_a_cancelled_job_ends_its_child(server, tmp_path):
    """Snakemake cancels a job by signalling its shell: the client ends, and the server ends the child's group."""
    env = {**os.environ, "PYTHONPATH": str(REPO), launch.SOCKET_ENV: server}
    pid_file = tmp_path / "pid"
    client = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.tools.launch",
            "run",
            "-m",
            "timeit",
            "-n",
            "1",
            "-s",
            f"import os; open({str(pid_file)!r}, 'w').write(str(os.getpid()))",
            "import time; time.sleep(120)",
        ],
        env=env,
        cwd=tmp_path,
    )
    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text()):
        assert time.monotonic() < deadline and client.poll() is None
        time.sleep(0.1)
    child = int(pid_file.read_text())
    assert child != client.pid
    client.send_signal(signal.SIGTERM)
    client.wait(timeout=10)
    deadline = time.monotonic() + 10
    while _alive(child):
        assert time.monotonic() < deadline, "the forked child outlived its cancelled job"
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie until the server reaps it: that is gone too
    return Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
