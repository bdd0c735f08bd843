"""Checkpoints that survive faults: written atomically, carrying a checksum that is verified before use.

A checkpoint is written to a temporary file in its own directory, flushed to disk (`fsync`) and renamed over
the target, so a full disk, a crash or `kill -9` mid-write leaves the previous file whole. Before it is
written, a SHA-256 digest of its content (every tensor's dtype, shape and bytes, and every plain value, in
order) is stored in it under `samr1_checksum`; loading recomputes the digest, so flipped bytes are found
before a run resumes, tests or exports from them. A corrupt or unreadable checkpoint is reported with its
path and the newest intact checkpoint in the same directory.

`SafeCheckpointIO` is the Lightning plugin (the `samr1` CLI installs it); `save_checkpoint`,
`load_checkpoint` and `read_checkpoint_metadata` are the same operations for code outside a Trainer.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

CHECKSUM_KEY = "samr1_checksum"
_HASH_THREADS = min(8, os.cpu_count() or 1)  # hashlib releases the GIL: large tensors hash in parallel


class CorruptCheckpointError(RuntimeError):
    """A checkpoint that cannot be read, or whose content does not match its checksum."""

    def __init__(self, path: Path, reason: str, alternative: Path | None) -> None:
        self.path, self.reason, self.alternative = path, reason, alternative
        if alternative is not None:
            advice = f"The newest intact checkpoint in {path.parent} is {alternative}: pass --ckpt_path {alternative}"
        else:
            advice = f"No intact checkpoint is left in {path.parent}"
        super().__init__(f"checkpoint {path} is corrupt ({reason}). {advice}.")


# ---------------------------------------------------------------------------------------------- checksum
def content_digest(checkpoint: Mapping[str, Any]) -> str:
    """SHA-256 over the checkpoint's content in order (the `samr1_checksum` entry itself left out).

    Tensors count by dtype, shape and bytes; plain values by type and `repr` (exact for ints, floats and
    strings). The same dict before `torch.save` and after `torch.load` gives the same digest.
    """
    tokens: list[bytes] = []
    tensors: list[torch.Tensor] = []
    _flatten({k: v for k, v in checkpoint.items() if k != CHECKSUM_KEY}, tokens, tensors)
    with ThreadPoolExecutor(_HASH_THREADS) as pool:
        tensor_digests = list(pool.map(_tensor_digest, tensors))
    digest = hashlib.sha256()
    for token in tokens:
        digest.update(token)
    for tensor_digest in tensor_digests:
        digest.update(tensor_digest)
    return digest.hexdigest()


def _flatten(value: Any, tokens: list[bytes], tensors: list[torch.Tensor]) -> None:
    if isinstance(value, torch.Tensor):
        tokens.append(f"T{value.dtype}{tuple(value.shape)};".encode())
        tensors.append(value)
    elif isinstance(value, Mapping):
        tokens.append(f"M{len(value)};".encode())
        for key, item in value.items():
            _flatten(key, tokens, tensors)
            _flatten(item, tokens, tensors)
    elif isinstance(value, (list, tuple)):
        tokens.append(f"S{len(value)};".encode())
        for item in value:
            _flatten(item, tokens, tensors)
    elif isinstance(value, (set, frozenset)):  # iteration order of a set is not stable across processes
        tokens.append(f"F{sorted(repr(item) for item in value)!r};".encode())
    else:
        tokens.append(f"V{type(value).__name__}:{value!r};".encode())


def _tensor_digest(tensor: torch.Tensor) -> bytes:
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    if flat.numel() == 0:
        return hashlib.sha256(b"").digest()
    return hashlib.sha256(memoryview(flat.view(torch.uint8).numpy())).digest()


def with_checksum(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """A shallow copy of `checkpoint` carrying its content digest under `samr1_checksum`."""
    return {**checkpoint, CHECKSUM_KEY: {"algorithm": "sha256", "digest": content_digest(checkpoint)}}


def checksum_problem(checkpoint: Mapping[str, Any]) -> str | None:
    """Why `checkpoint`'s content does not match its recorded checksum; None when it matches or has none."""
    recorded = checkpoint.get(CHECKSUM_KEY)
    if recorded is None:
        return None
    actual = content_digest(checkpoint)
    if recorded.get("digest") != actual:
        return f"checksum mismatch: content sha256 {actual[:16]}..., recorded {str(recorded.get('digest'))[:16]}..."
    return None


# ---------------------------------------------------------------------------------------------- writing
def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write `path` through `write(file)` into a temporary file beside it, fsync, then rename over `path`.

    On any failure the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)  # the rename itself reaches the disk
    return path


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not every platform opens directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(checkpoint: Mapping[str, Any], path: str | Path) -> Path:
    """`torch.save` `checkpoint` with its checksum, atomically."""
    stamped = with_checksum(checkpoint)
    return atomic_write(path, lambda f: torch.save(stamped, f))


# ---------------------------------------------------------------------------------------------- reading
def load_checkpoint(
    path: str | Path, map_location: Any = "cpu", weights_only: bool = True, verify: bool = True
) -> dict[str, Any]:
    """Load a checkpoint (`weights_only=True` unless told otherwise) and verify its checksum.

    Raises `CorruptCheckpointError` (naming the path and the newest intact checkpoint beside it) when the file
    cannot be read or its content differs from its checksum; `FileNotFoundError` when it does not exist.
    A checkpoint written without a checksum (e.g. by a plain Lightning Trainer) loads unverified.
    """
    path = Path(path)
    checkpoint = _read(path, map_location=map_location, weights_only=weights_only)
    if verify:
        problem = checksum_problem(checkpoint)
        if problem is not None:
            raise CorruptCheckpointError(path, problem, newest_intact_checkpoint(path.parent, exclude=path))
    return checkpoint


def read_checkpoint_metadata(path: str | Path) -> dict[str, Any]:
    """The checkpoint's dict with tensors memory-mapped, not read: cheap access to hyper-parameters and ids.

    Only readability is checked here; the checksum is verified when the checkpoint is loaded for use.
    """
    return _read(Path(path), map_location="cpu", weights_only=True, mmap=True)


def _read(path: Path, map_location: Any, weights_only: bool, mmap: bool = False) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=weights_only, mmap=mmap)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" in str(err):
            raise ValueError(
                f"checkpoint {path} holds objects that a safe load (weights_only=True) refuses: "
                f"{str(err).splitlines()[0]}"
            ) from err
        raise CorruptCheckpointError(path, f"unreadable: {_first_line(err)}", _alternative(path)) from err
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as err:
        raise CorruptCheckpointError(path, f"unreadable: {_first_line(err)}", _alternative(path)) from err


def _alternative(path: Path) -> Path | None:
    return newest_intact_checkpoint(path.parent, exclude=path)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def newest_intact_checkpoint(directory: str | Path, exclude: str | Path | None = None) -> Path | None:
    """The most recently written `*.ckpt` in `directory` that loads and matches its checksum (None if none)."""
    directory = Path(directory)
    skip = Path(exclude).resolve() if exclude is not None else None
    candidates = [p for p in directory.glob("*.ckpt") if p.is_file() and p.resolve() != skip]
    for candidate in sorted(candidates, key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            checkpoint = torch.load(candidate, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # unreadable: try the next one
            continue
        if checksum_problem(checkpoint) is None:
            return candidate
    return None


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning `CheckpointIO`: atomic writes with a checksum, verified loads (see the module docstring).

    Loads use `weights_only=True` unless the run explicitly asks for `weights_only=False`. Paths with a
    remote protocol (`s3://...`) go through Lightning's own writer, still carrying the checksum.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(with_checksum(checkpoint), path, storage_options)
            return
        save_checkpoint(checkpoint, path)

    def load_checkpoint(
        self, path, map_location: Any = lambda storage, loc: storage, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if "://" in str(path):
            checkpoint = super().load_checkpoint(path, map_location, weights_only)
            problem = checksum_problem(checkpoint)
            if problem is not None:
                raise CorruptCheckpointError(Path(str(path)), problem, None)
            return checkpoint
        return load_checkpoint(path, map_location=map_location, weights_only=weights_only is not False)


__all__ = [
    "CHECKSUM_KEY",
    "CorruptCheckpointError",
    "SafeCheckpointIO",
    "atomic_write",
    "checksum_problem",
    "content_digest",
    "load_checkpoint",
    "newest_intact_checkpoint",
    "read_checkpoint_metadata",
    "save_checkpoint",
    "with_checksum",
]
