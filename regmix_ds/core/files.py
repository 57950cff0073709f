"""File helpers shared by every stage: atomic writes and strict, safe reads.

Anything another process may read (a manifest, a result, a results table) is written to a
temporary file in the same directory and renamed into place, so a reader sees the old file or
the new one, never a torn one.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat as stat_module
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import yaml

from regmix_ds.core import faults
from regmix_ds.core.errors import RegmixError


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """Yield a file handle; on success it replaces `path` at once, on error it leaves nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            faults.reached(f"open {path.name}")
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp makes the file private (0600); give it the mode a plain open() would have.
        os.chmod(tmp, 0o666 & ~_umask())
        faults.reached(f"write {path.name}")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` so that a reader sees the old file or the new one, never a torn one."""
    with atomic_output(path) as handle:
        handle.write(text)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` atomically as JSON, indented by 2, keys in their given order, with a final newline."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; a missing or malformed file is a one-line RegmixError naming it."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise RegmixError(path, "file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RegmixError(path, f"not valid JSON ({err})") from None
    except OSError as err:
        raise RegmixError(path, f"cannot read ({err.strerror})") from None


def read_yaml(path: str | os.PathLike) -> Any:
    """Parse a YAML file with `safe_load` only: user files never construct Python objects."""
    try:
        with open(path, encoding="utf-8") as handle:
            return yaml.safe_load(handle)
    except FileNotFoundError:
        raise RegmixError(path, "file not found") from None
    except yaml.YAMLError as err:
        problem = str(err).replace("\n", " ")
        raise RegmixError(path, f"not valid YAML ({problem})") from None
    except OSError as err:
        raise RegmixError(path, f"cannot read ({err.strerror})") from None


def read_mapping(path: str | os.PathLike) -> dict:
    """Read a JSON or YAML file (by extension) that must hold a mapping at its top level."""
    data = read_json(path) if str(path).endswith(".json") else read_yaml(path)
    if not isinstance(data, dict):
        raise RegmixError(path, "expected a mapping at the top level")
    return data


def file_hash(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes: the provenance every output records for its inputs."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as err:
        raise RegmixError(path, f"cannot read ({err.strerror})") from None
    return digest.hexdigest()


def newest_mtime(directory: str | os.PathLike) -> float:
    """The newest modification time of `directory` and of everything under it.

    Other processes may be writing there (a proxy renaming `.result.json.*.tmp` into place, a
    checkpoint being rotated): an entry that vanishes between the listing and its stat is
    skipped, never an error. Only `directory` itself must exist.
    """
    newest = os.stat(directory).st_mtime
    pending = [os.fspath(directory)]
    while pending:
        try:
            entries = list(os.scandir(pending.pop()))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            try:
                newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
            except FileNotFoundError:
                continue
    return newest


def entries(directory: str | os.PathLike) -> list[Path]:
    """The entries of `directory` now: none when it does not exist, or stopped existing while listed."""
    try:
        return list(Path(directory).iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def size_or_none(path: str | os.PathLike) -> int | None:
    """The size of regular file `path`, or None when there is none (now: it may vanish at any moment)."""
    try:
        stat = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return stat.st_size if stat_module.S_ISREG(stat.st_mode) else None
