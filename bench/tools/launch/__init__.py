"""Commands run by forking a server that has already imported torch, transformers, peft and the harness.

A cell's own Python process pays seconds of CPU in imports before its first step, more than a tiny cell then
computes (paper-tiny's cells; docs/measured.md). `snakemake --config forkserver=true` starts one server for the run
(Snakefile, onstart) and its jobs' `python -m bench ...` reach it through `python -m bench.tools.launch run -m bench
...`: the client hands its argv, environment, working directory and standard streams to the server, which forks a
child that runs `python -m bench` on them from the already-imported state and reports the exit status back. Without
a server (none started, or gone) the client execs the plain interpreter, so a job runs the same either way.

Not harness code: it starts processes and changes nothing a cell computes; tests/test_launch.py makes one cell both
ways and compares the records. The harness fingerprint (bench/harness/identity.py) covers bench/harness/ and
bench/api/, not this package.
The server is one thread (fork from a threaded process can inherit held locks) that never runs a torch op (a
forked child of a process whose OpenMP pool has started can hang); its children start from that pristine state.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys
import time

SOCKET_ENV = "PEFT_REPRO_FORKSERVER"  # the server's socket path, for the clients
PRELOAD = (
    "torch",
    "transformers",
    "peft",
    "bench.harness.cell",
    "bench.harness.models",
    "bench.harness.train",
    "bench.harness.batches",
    "bench.harness.evaluation",
    "bench.harness.scorers",
    "bench.harness.kinds.seq2seq",
    "bench.harness.retention",
    "bench.harness.curves",
    *(
        f"transformers.models.{arch}.modeling_{arch}"
        for arch in ("gpt2", "t5", "bart", "llama", "bert", "roberta", "mpnet", "qwen2", "gemma3")
    ),
)
MAX_MESSAGE = 1 << 20


def client(argv: list[str]) -> None:
    """Run `python <argv>` in a child of the server named by $PEFT_REPRO_FORKSERVER, or here when there is none."""
    path = os.environ.get(SOCKET_ENV)
    if path:
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            sock.connect(path)
        except OSError:
            sock = None
        if sock is not None:
            request = json.dumps({"argv": argv, "env": dict(os.environ), "cwd": os.getcwd()}).encode()
            socket.send_fds(sock, [request], [0, 1, 2])
            reply = sock.recv(64)  # empty when the server died: the job fails rather than run twice
            sys.exit(int(reply) if reply else 1)
    os.execv(sys.executable, [sys.executable, *argv])


def serve(path: str) -> None:
    """Import PRELOAD, then fork a child per request until the parent (Snakemake) exits or SIGTERM arrives."""
    import importlib
    from pathlib import Path

    import methods

    for name in PRELOAD:
        importlib.import_module(name)
    for file in sorted(Path(methods.__path__[0]).glob("*.py")):  # as bench.harness.method.get_method will
        importlib.import_module(f"methods.{file.stem}")

    parent = os.getppid()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    if os.path.exists(path):
        os.unlink(path)
    listener.bind(f"{path}.tmp")
    listener.listen(64)
    os.rename(f"{path}.tmp", path)  # clients see the socket only once it accepts
    children: dict[int, socket.socket] = {}  # child pid -> its client's connection
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    try:
        while not stopping and os.getppid() == parent:
            readable, _, _ = select.select([listener, *children.values()], [], [], 0.2)
            for sock in readable:
                if sock is listener:
                    conn, _ = listener.accept()
                    pid = _fork_request(conn, [listener, *children.values()])
                    if pid:
                        children[pid] = conn
                else:  # a client closed its end (Snakemake cancelled the job): end its child and what it started
                    pid = next(p for p, c in children.items() if c is sock)
                    _kill_group(pid)
            while children:
                pid, status = os.waitpid(-1, os.WNOHANG)
                if not pid:
                    break
                conn = children.pop(pid, None)
                if conn is not None:
                    code = os.waitstatus_to_exitcode(status)
                    try:
                        conn.send(str(code if code >= 0 else 128 - code).encode())  # a signal, as a shell says
                    except OSError:
                        pass
                    conn.close()
    finally:
        for pid in children:
            _kill_group(pid)
        listener.close()
        if os.path.exists(path):
            os.unlink(path)


def _fork_request(conn: socket.socket, others: list[socket.socket]) -> int | None:
    """Fork a child for the request on `conn`; None where there was no valid request (the client is told 1)."""
    try:
        message, fds, _, _ = socket.recv_fds(conn, MAX_MESSAGE, 3)
        request = json.loads(message) if len(fds) == 3 else None
    except (OSError, ValueError):
        fds, request = [], None
    if request is None:
        for fd in fds:
            os.close(fd)
        try:
            conn.send(b"1")
        except OSError:
            pass
        conn.close()
        return None
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        for fd in fds:
            os.close(fd)
        try:
            os.setpgid(pid, pid)  # here too, so that a cancel arriving before the child's own call finds the group
        except OSError:
            pass
        return pid
    code = 1
    try:
        for sock in (conn, *others):  # the child holds no other job's connection open
            sock.close()
        os.setpgid(0, 0)  # the server ends a cancelled job's whole group (METEOR's JVM too)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        code = _run_python(request["argv"])
    except BaseException:  # noqa: BLE001  setting up the child failed: say why, status 1
        import traceback

        traceback.print_exc()
    finally:
        try:  # what the interpreter does at exit (atexit handlers: peft, tqdm, METEOR's process), then leave
            import atexit

            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _run_python(argv: list[str]) -> int:
    """`python -m MODULE ARGS...` in this process, as the interpreter would run it."""
    import runpy
    import traceback

    if len(argv) < 2 or argv[0] != "-m":
        print(f"error: the fork server runs `-m MODULE ...` only, not {argv[:2]}", file=sys.stderr)
        return 2
    sys.argv = [argv[1], *argv[2:]]
    try:
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        if exit_.code is None or isinstance(exit_.code, int):
            return exit_.code or 0
        print(exit_.code, file=sys.stderr)
        return 1
    except BaseException:  # noqa: BLE001  as the interpreter does: the traceback, status 1
        traceback.print_exc()
        return 1
    return 0


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass


def start(path: str, timeout: float = 120.0):
    """Start a server on `path` (a child of this process) and wait until it accepts; returns its Popen, or None
    (with a warning) where it could not start: the jobs then run as plain processes."""
    import subprocess

    server = subprocess.Popen([sys.executable, "-m", "bench.tools.launch", "serve", path], stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            print(
                f"warning: the fork server did not start (exit {server.wait()}): jobs run as plain processes",
                file=sys.stderr,
            )
            return None
        time.sleep(0.1)
    return server
