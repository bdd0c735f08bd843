"""A run directory belongs to one run: a second fit into it is refused unless it resumes that run.

`samr1 fit` claims its run directory (the trainer's `default_root_dir`, when set) and checks every
`ModelCheckpoint` `dirpath` before training. The run directory already holds a run when it has a
`samr1-run.json` (written at the claim); a checkpoint directory does when it has a `*.ckpt` file. Either is
accepted only when the fit resumes it: `--ckpt_path last` (or `hpc`), or a checkpoint file inside one of
these directories. While a fit runs, an exclusive lock on the run directory's `.samr1-run.lock` refuses any
other fit of it, resumed or not, so two processes never interleave their metrics or checkpoints.
Checkpoint directories get no files of their own (ModelCheckpoint warns about a non-empty directory).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

RUN_FILE = "samr1-run.json"
LOCK_FILE = ".samr1-run.lock"
RESUME_WORDS = ("last", "hpc")  # Lightning's ckpt_path values that resume from the run's own checkpoints

try:  # POSIX advisory locks; elsewhere only the held-run check applies
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


class RunDirectoryError(RuntimeError):
    """The directory holds another run (or is in use by another fit)."""


@dataclass
class RunClaim:
    """The claimed run directory (None: only checkpoint directories were checked) and its open lock;
    `release()` (or process exit) frees it."""

    directory: Path | None
    _locks: list = field(default_factory=list)

    def release(self) -> None:
        for handle in self._locks:
            handle.close()  # closing the file drops its flock
        self._locks.clear()


def held_run(directory: Path, marker_only: bool = False) -> str | None:
    """What shows that `directory` already holds a run (a file path), or None.

    A run directory is marked by its `samr1-run.json`; a checkpoint directory by any `*.ckpt`.
    """
    marker = directory / RUN_FILE
    if marker.is_file():
        return str(marker)
    if marker_only:
        return None
    checkpoints = sorted(directory.glob("*.ckpt"))
    return str(checkpoints[0]) if checkpoints else None


def resumes(ckpt_path: str | None, directories: list[Path]) -> bool:
    """True when `ckpt_path` continues a run kept in one of `directories`."""
    if not ckpt_path:
        return False
    if ckpt_path in RESUME_WORDS:
        return True
    path = Path(ckpt_path).resolve()
    return any(path.is_relative_to(d.resolve()) for d in directories)


def claim_run_directory(
    run_dir: str | Path | None,
    checkpoint_dirs: list[str | Path],
    ckpt_path: str | None,
    command: list[str] | None = None,
) -> RunClaim:
    """Claim `run_dir` and check `checkpoint_dirs` for a fit from `ckpt_path` (None: a fresh start).

    Raises `RunDirectoryError` when one of them holds another run, or another fit holds `run_dir`.
    """
    root = Path(run_dir).resolve() if run_dir is not None else None
    checkpoint_paths = {Path(d).resolve() for d in checkpoint_dirs}
    dirs = list(dict.fromkeys(d for d in [root, *checkpoint_paths] if d is not None))
    if not resumes(ckpt_path, dirs):
        for directory in dirs:
            evidence = held_run(directory, marker_only=directory not in checkpoint_paths)
            if evidence is not None:
                raise RunDirectoryError(
                    f"{directory} already holds a run ({evidence}). A run directory belongs to one run: resume "
                    f"it with --ckpt_path last (or a checkpoint inside it), or write this run elsewhere "
                    f"(--trainer.default_root_dir, and the ModelCheckpoint dirpath), or delete the old run first."
                )
    claim = RunClaim(root)
    if root is None:
        return claim
    try:
        root.mkdir(parents=True, exist_ok=True)
        claim._locks.append(_lock(root))
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": list(sys.argv if command is None else command),
            "resumed_from": ckpt_path,
        }
        _write_record(root / RUN_FILE, record)
    except BaseException:
        claim.release()
        raise
    return claim


def _lock(directory: Path):
    handle = open(directory / LOCK_FILE, "a+")
    if fcntl is None:
        return handle
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        owner = _read_record(directory / RUN_FILE)
        raise RunDirectoryError(
            f"{directory} is in use by another samr1 fit (pid {owner.get('pid', '?')} on "
            f"{owner.get('host', '?')}, started {owner.get('started', '?')}); wait for it or write elsewhere"
        ) from None
    return handle


def _read_record(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_record(path: Path, record: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)


__all__ = ["LOCK_FILE", "RUN_FILE", "RunClaim", "RunDirectoryError", "claim_run_directory", "held_run"]
