"""The dependency lock: `config/requirements.lock` pins every Python dependency (transitively) by version and
sha256; installs use it with `--require-hashes`. `pyproject.toml` keeps the ranges the suite supports, for
people who install it as a library.

- `python -m bench lock [--upgrade]` regenerates the lock (uv pip compile; --upgrade moves every pin to the
  newest version the ranges allow, else pins are kept and only what changed in pyproject.toml moves).
- `python -m bench compat` builds a throwaway environment with the newest versions pyproject.toml allows and
  runs the test suite in it: the next upstream break is found by a command, not by a user.
- Cells refuse to start under installed versions outside pyproject.toml's ranges (`check_supported`), and
  records keep the lock's sha256 and the locked packages' installed versions (`environment`).
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import subprocess
import sys
import tempfile
import tomllib
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from bench.api.errors import BenchError

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "config" / "requirements.lock"
PYPROJECT = ROOT / "pyproject.toml"
EXTRAS = ("dev", "cluster")
PYTHON = "3.11"  # the interpreter of this project's machines and CI
PLATFORM = "x86_64-manylinux_2_28"
# torch's CPU-only wheel (the PyPI torch pulls a multi-GB CUDA build); this machine keeps it in /opt/wheels,
# elsewhere PyTorch's own CPU index serves the same file (the lock pins its sha256 either way)
TORCH_CPU_WHEELS = Path("/opt/wheels")
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
INSTALL = "pip install --no-deps --require-hashes -r config/requirements.lock"


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@lru_cache(maxsize=1)
def lock_sha256() -> str | None:
    return hashlib.sha256(LOCK.read_bytes()).hexdigest() if LOCK.is_file() else None


def lock_pins(text: str | None = None) -> dict[str, str]:
    """{normalised name: version} of every package a lock file pins (the current lock by default)."""
    text = LOCK.read_text() if text is None else text
    return {normalise(m[1]): m[2] for m in re.finditer(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", text, re.M)}


def installed_versions(names) -> dict[str, str | None]:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def environment() -> dict:
    """What a record keeps of the installed environment: the lock's sha256 and, for every package the lock pins,
    the version actually installed (None: not installed), so a report can name the packages that differ."""
    return {"lock_sha256": lock_sha256(), "packages": installed_versions(sorted(lock_pins())) if LOCK.is_file() else {}}


def differing_packages(packages: dict[str, str | None], pins: dict[str, str] | None = None) -> dict[str, tuple]:
    """{name: (version in the record, version in the lock)} where a record's installed versions differ from the
    lock's pins (the current lock by default)."""
    pins = lock_pins() if pins is None else pins
    return {
        name: (packages.get(name), pins.get(name))
        for name in sorted(set(packages) | set(pins))
        if packages.get(name) != pins.get(name)
    }


def other_lock(env: dict, shown: int = 4) -> str | None:
    """Why a record's environment is not today's lock, for the report's stale list (None: made under it): the
    lock it was made under and the packages whose versions differ from today's pins. Records older than
    `env.lock_sha256` say so and compare the versions they kept (torch, transformers, peft)."""
    current = lock_sha256()
    if env.get("lock_sha256") == current:
        return None
    packages = env.get("packages") or {name: env[name] for name in ("torch", "transformers", "peft") if name in env}
    pins = lock_pins() if current else {}
    differ = {
        n: v for n, v in differing_packages(packages, pins).items() if "packages" in env or n in packages
    }  # old records: only the versions they kept
    made = f"lock {env['lock_sha256'][:12]}" if env.get("lock_sha256") else "no lock recorded"
    listed = [f"{name} {old or '–'} (lock {new or '–'})" for name, (old, new) in differ.items()]
    more = f", … {len(listed) - shown} more" if len(listed) > shown else ""
    return f"{made}: " + (", ".join(listed[:shown]) + more if listed else "same package versions")


def supported_ranges() -> dict[str, str]:
    """{normalised name: specifier} of pyproject.toml's runtime dependencies."""
    from packaging.requirements import Requirement

    if PYPROJECT.is_file():
        lines = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    else:  # the code without its project file (a copied workflow): what the installed suite declares
        try:
            lines = metadata.requires("peft-repro") or []
        except metadata.PackageNotFoundError:
            return {}
    requirements = [Requirement(line) for line in lines]
    return {normalise(r.name): str(r.specifier) for r in requirements if r.marker is None}


def check_supported() -> None:
    """One line naming the supported range when an installed dependency lies outside pyproject.toml's ranges:
    numbers made under an untested version must never appear silently."""
    from packaging.specifiers import SpecifierSet

    for name, specifier in supported_ranges().items():
        version = installed_versions([name])[name]
        if version is None:
            raise BenchError(f"{name} is not installed (this suite needs {name}{specifier}): run {INSTALL}")
        if not SpecifierSet(specifier).contains(version, prereleases=True):
            raise BenchError(
                f"{name} {version} is installed but this suite supports {name}{specifier} "
                f"(pyproject.toml): run {INSTALL}"
            )


def compile_command(output: Path, upgrade: bool) -> list[str]:
    torch_source = (
        ["--find-links", str(TORCH_CPU_WHEELS)]
        if TORCH_CPU_WHEELS.is_dir()
        else ["--extra-index-url", TORCH_CPU_INDEX, "--index-strategy", "unsafe-best-match"]
    )
    return [
        "uv",
        "pip",
        "compile",
        str(PYPROJECT),
        *(a for e in EXTRAS for a in ("--extra", e)),
        "--generate-hashes",
        "--python-version",
        PYTHON,
        "--python-platform",
        PLATFORM,
        *torch_source,
        "--custom-compile-command",
        "python -m bench lock",
        "--quiet",
        "-o",
        str(output),
        *(["--upgrade"] if upgrade else []),
    ]


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    print("+", shlex.join(command), flush=True)
    try:
        return subprocess.run(command, check=True, **kwargs)
    except FileNotFoundError:
        raise BenchError(f"{command[0]} not found: install the dev extra ({INSTALL}), which brings uv") from None
    except subprocess.CalledProcessError as error:
        raise BenchError(
            f"`{shlex.join(command[:3])} ...` failed with status {error.returncode} (output above)"
        ) from None


def write_lock(upgrade: bool) -> dict[str, tuple]:
    """Regenerate the lock; returns {name: (old, new)} of the pins that moved."""
    before = lock_pins() if LOCK.is_file() else {}
    run(compile_command(LOCK, upgrade), cwd=ROOT)
    lock_sha256.cache_clear()
    return differing_packages(before, lock_pins())


def compat(pytest_args: list[str]) -> int:
    """Install the newest versions pyproject.toml allows into a throwaway venv and run the tests there."""
    with tempfile.TemporaryDirectory(prefix="peft-repro-compat-") as tmp:
        newest = Path(tmp) / "newest.txt"
        run(compile_command(newest, upgrade=True), cwd=ROOT)
        moved = differing_packages(lock_pins(newest.read_text()))
        print("newest allowed vs the lock:" if moved else "the lock already holds the newest allowed versions")
        for name, (newer, locked) in moved.items():
            print(f"  {name}: {locked} -> {newer}")
        venv = Path(tmp) / "venv"
        run([sys.executable, "-m", "venv", str(venv)])
        python = str(venv / "bin" / "python")
        run(
            [
                python,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-deps",
                "--require-hashes",
                "-r",
                str(newest),
                "-r",
                str(ROOT / "config" / "model-packages.txt"),
            ],
            cwd=ROOT,
        )
        run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", str(ROOT)], cwd=ROOT)
        env = {**os.environ, "PEFT_REPRO_COMPAT": "1"}  # tests that compare the install with the lock know why not
        return subprocess.run(
            [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *pytest_args], cwd=ROOT, env=env
        ).returncode


DOCS_IN = ROOT / "config" / "docs-requirements.in"
DOCS_LOCK = ROOT / "config" / "docs-requirements.lock"


def write_docs_lock() -> list[str]:
    """Regenerate config/docs-requirements.lock: the docs site's packages (mkdocs, mkdocs-material) and theirs,
    pinned by sha256, constrained to config/requirements.lock's versions; packages that lock already pins are left
    out, so both files install together (`pip install --no-deps --require-hashes -r ... -r ...`) with no pin twice.
    A lock of its own: records keep the main lock's sha256, which the docs must not change. Returns its pins."""
    with tempfile.TemporaryDirectory(prefix="peft-repro-docs-lock-") as tmp:
        constraints, out = Path(tmp) / "constraints.txt", Path(tmp) / "docs.lock"
        constraints.write_text("".join(f"{n}=={v}\n" for n, v in lock_pins().items()))
        run(
            [
                "uv",
                "pip",
                "compile",
                str(DOCS_IN),
                "--generate-hashes",
                "--python-version",
                PYTHON,
                "--python-platform",
                PLATFORM,
                "-c",
                str(constraints),
                "--no-header",
                "--no-annotate",
                "--quiet",
                "-o",
                str(out),
            ],
            cwd=ROOT,
        )
        main = lock_pins()
        blocks = [b for b in re.split(r"\n(?=[A-Za-z0-9])", out.read_text()) if re.match(r"[A-Za-z0-9]", b)]
        kept = [b.rstrip() for b in blocks if normalise(b.split("==", 1)[0]) not in main]
    DOCS_LOCK.write_text(
        "# The docs site's packages (mkdocs, mkdocs-material), those config/requirements.lock does not\n"
        "# already pin, by version and sha256. Regenerate: python -m bench.lock --docs\n" + "\n".join(kept) + "\n"
    )
    return sorted(lock_pins(DOCS_LOCK.read_text()))


if __name__ == "__main__":  # python -m bench.lock --docs (the main lock: python -m bench lock)
    if sys.argv[1:] != ["--docs"]:
        sys.exit("usage: python -m bench.lock --docs   (regenerates config/docs-requirements.lock)")
    print("pinned:", ", ".join(write_docs_lock()))
