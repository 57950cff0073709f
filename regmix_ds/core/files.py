"""File helpers shared by every stage: atomic writes and strict, safe reads.

Anything another process may read (a manifest, a result, a results table) is written to a
temporary file in the same directory and renamed into place, so a reader sees the old file or
the new one, never a torn one.
"""
from __future__ import annotations

import contextlib
import csv
import ctypes
import errno
import fcntl
import hashlib
import io
import json
import math
import os
import shutil
import stat as stat_module
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import yaml

from regmix_ds.core import faults
from regmix_ds.core.errors import RegmixError

# Errors that mean "this file system will not take the output", whoever's write hit them.
_STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EIO}


def cannot_write(path: str | os.PathLike, err: OSError) -> RegmixError:
    """The one-line error for an output the operating system refused."""
    return RegmixError(path, f"cannot write ({err.strerror or err})")


def _staging_file(path: Path, suffix: str) -> tuple[int, str]:
    """A new private temporary file beside `path` (same file system, so renaming it is atomic)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            raise RegmixError(path, "is a directory, expected a file path")
        return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    except OSError as err:
        raise cannot_write(path, err) from None


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """Yield a file handle; on success it replaces `path` at once, on error it leaves nothing."""
    path = Path(path)
    fd, tmp = _staging_file(path, ".tmp")
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            faults.reached(f"open {path.name}")
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        follow_umask(tmp)
        faults.reached(f"write {path.name}")
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if err.errno in _STORAGE_ERRORS or err.filename in (tmp, str(path)):
            raise cannot_write(path, err) from None
        raise
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def follow_umask(path: str | os.PathLike) -> None:
    """Give a `mkstemp` file (private, 0600) the mode a plain open() would: a team's shared work dir
    stays readable to the team."""
    os.chmod(path, 0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class OutputSet:
    """The files one stage writes, committed together: a reader sees the old set or the new one.

    The stage writes each output to `staged(path)`, a file beside it. The commit then writes a
    journal (the full list of renames) beside every output, then one commit marker: that marker
    is the instant the new set becomes the set. Then it renames the staged files into place and
    removes the journals and the marker. Killed before the marker, the old set stands (the next
    writer throws the leftovers away); killed after it, whichever reader comes first (every
    read in this module calls `settle`) finishes the renames, whichever output it reads, so the
    set reads as the new one. Outputs in different directories (best.json and a DeepSpeed config
    elsewhere) are covered the same way. One writer of a given set at a time: entering a set
    also throws away what a writer killed while staging left (`.<name>.*.stage` beside each output).
    """

    def __init__(self, outputs: Iterable[str | os.PathLike], inputs: Iterable[str | os.PathLike] = ()):
        self.outputs = [Path(path) for path in outputs]
        check_outputs(self.outputs, inputs)
        self._staged: dict[Path, Path] = {}

    def __enter__(self) -> OutputSet:
        for path in self.outputs:
            settle(path, discard_uncommitted=True)
            _remove_abandoned_stages(path)
        return self

    def staged(self, path: str | os.PathLike) -> Path:
        """Where to write output `path` now; it takes `path`'s place at the commit."""
        path = Path(path)
        if path not in self.outputs:
            raise ValueError(f"{path} is not one of this stage's outputs")
        if path not in self._staged:
            fd, tmp = _staging_file(path, ".stage")
            os.close(fd)
            follow_umask(tmp)
            self._staged[path] = Path(tmp)
        return self._staged[path]

    def write_bytes(self, path: str | os.PathLike, data: bytes) -> None:
        """Stage `data` as output `path`."""
        staged = self.staged(path)
        try:
            staged.write_bytes(data)
        except OSError as err:
            raise cannot_write(path, err) from None
        faults.reached(f"stage {Path(path).name}")

    def write_text(self, path: str | os.PathLike, text: str) -> None:
        """Stage `text` (UTF-8) as output `path`."""
        self.write_bytes(path, text.encode("utf-8"))

    def write_json(self, path: str | os.PathLike, obj: Any) -> None:
        """Stage `obj` as JSON output `path`, as `write_json_atomic` spells it."""
        self.write_text(path, json_text(path, obj))

    def __exit__(self, kind: type | None, *_: Any) -> None:
        if kind is None:
            try:
                self._commit()
            except OSError as err:
                self._discard()
                raise cannot_write(err.filename or self.outputs[0], err) from None
        else:
            self._discard()

    def _commit(self) -> None:
        if not self._staged:
            return
        marker = _marker_of(next(iter(self._staged)))
        journal = {"renames": [[str(staged), str(path)] for path, staged in self._staged.items()],
                   "marker": str(marker)}
        for staged in self._staged.values():
            with open(staged, "rb+") as handle:
                os.fsync(handle.fileno())
        for path in self._staged:
            write_json_atomic(_journal_of(path), journal)
        write_json_atomic(marker, {})
        _finish(journal)

    def _discard(self) -> None:
        for staged in self._staged.values():
            _unlink_quietly(staged)


def write_set(contents: Mapping[Path, str | bytes], inputs: Iterable[str | os.PathLike] = ()) -> None:
    """Write every `path -> content` (text as UTF-8) as one `OutputSet`: all new or all old."""
    with OutputSet(contents, inputs=inputs) as out:
        for path, content in contents.items():
            out.write_bytes(path, content.encode("utf-8") if isinstance(content, str) else content)


def _remove_abandoned_stages(path: Path) -> None:
    """Staged copies of `path` a killed writer left before its commit (a token shard's can be gigabytes)."""
    for entry in entries(path.parent):
        if entry.name.startswith(f".{path.name}.") and entry.name.endswith(".stage"):
            _unlink_quietly(entry)


def _journal_of(path: Path) -> Path:
    return path.with_name(f".{path.name}.commit")


def _marker_of(path: Path) -> Path:
    return path.with_name(f".{path.name}.committed")


def _unlink_quietly(path: str | os.PathLike) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _finish(journal: Mapping[str, Any]) -> None:
    """Rename every staged file of a committed set into place, then drop the journals and marker."""
    for staged, final in journal["renames"]:
        faults.reached(f"commit {Path(final).name}")
        with contextlib.suppress(FileNotFoundError):
            os.replace(staged, final)  # a staged file already gone was renamed before a kill
    for _, final in journal["renames"]:
        _unlink_quietly(_journal_of(Path(final)))
    _unlink_quietly(journal["marker"])


def settle(path: str | os.PathLike, discard_uncommitted: bool = False) -> None:
    """Finish a commit of `path`'s output set that a killed stage left half done, if there is one.

    A set whose marker was never written was not committed: readers leave it be (its writer may
    still be running); the next writer (`discard_uncommitted`) throws its staged files away.
    """
    try:
        journal = json.loads(_journal_of(Path(path)).read_text(encoding="utf-8"))
        renames, marker = journal["renames"], journal["marker"]
    except FileNotFoundError:
        return
    except (OSError, ValueError, KeyError, TypeError):
        return  # not our journal (ours is written atomically, never torn): leave it alone
    if os.path.exists(marker):
        _finish(journal)
    elif discard_uncommitted:
        for staged, final in renames:
            _unlink_quietly(staged)
            _unlink_quietly(_journal_of(Path(final)))


def check_outputs(outputs: Iterable[str | os.PathLike], inputs: Iterable[str | os.PathLike] = ()) -> None:
    """Refuse, before a stage's work, outputs the file system will not take: a directory where a
    file goes, a file where a directory goes, a read-only or unwritable directory, an output that
    is also an input. (A full disk shows only when the stage writes: `cannot_write` then.)"""
    outputs = [Path(path) for path in outputs]
    _refuse_overwriting_inputs(outputs, [Path(path) for path in inputs])
    for path in outputs:
        if path.is_dir():
            raise RegmixError(path, "is a directory, expected a file path")
        directory = _nearest_existing(path.parent)
        if not directory.is_dir():
            raise RegmixError(directory, "is a file, expected a directory")
        if not os.access(directory, os.W_OK):
            code = errno.EROFS if os.statvfs(directory).f_flag & os.ST_RDONLY else errno.EACCES
            raise cannot_write(path, OSError(code, os.strerror(code)))


def _nearest_existing(path: Path) -> Path:
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def _refuse_overwriting_inputs(outputs: list[Path], inputs: list[Path]) -> None:
    """An output that is also an input would be destroyed by the stage that needs it."""
    for output in outputs:
        for source in inputs:
            if _same_file(output, source):
                raise RegmixError(output, f"is also an input ({source}); choose another output path")


def _same_file(first: Path, second: Path) -> bool:
    try:
        return os.path.samefile(first, second)
    except OSError:
        return os.path.realpath(first) == os.path.realpath(second)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` so that a reader sees the old file or the new one, never a torn one."""
    with atomic_output(path) as handle:
        handle.write(text)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` atomically as JSON, indented by 2, keys in their given order, with a final newline."""
    write_text_atomic(path, json_text(path, obj))


def json_text(path: str | os.PathLike, obj: Any) -> str:
    """`obj` as the JSON every output uses: indented by 2, keys in their given order, a final newline."""
    try:
        return json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n"
    except ValueError:
        raise RegmixError(path, "would hold NaN or infinity, which JSON cannot carry") from None


# Every config and table regmix-ds reads is kilobytes; the bounds turn a wrong path (a token
# shard, /dev/zero, a FIFO) or a hostile file (a YAML alias bomb) into a message naming the limit
# instead of a hang, an out-of-memory kill or megabytes of error text.
MAX_INPUT_BYTES = 64 << 20
MAX_INPUT_VALUES = 1_000_000
MAX_PROBLEM_CHARS = 200


def read_input_text(path: str | os.PathLike) -> str:
    """The UTF-8 text of regular file `path`, at most MAX_INPUT_BYTES; anything else is a RegmixError."""
    settle(path)
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat then refuses it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise RegmixError(path, "file not found") from None
    except OSError as err:
        raise RegmixError(path, f"cannot read ({err.strerror})") from None
    mode = os.fstat(fd).st_mode
    if not stat_module.S_ISREG(mode):
        os.close(fd)
        kind = "a directory" if stat_module.S_ISDIR(mode) else "a FIFO, socket or device"
        raise RegmixError(path, f"is {kind}, expected a regular file")
    os.set_blocking(fd, True)
    with os.fdopen(fd, "rb") as handle:
        try:
            data = handle.read(MAX_INPUT_BYTES + 1)
        except OSError as err:
            raise RegmixError(path, f"cannot read ({err.strerror})") from None
    if len(data) > MAX_INPUT_BYTES:
        raise RegmixError(path, f"larger than {MAX_INPUT_BYTES >> 20} MiB, the most an input file may hold")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RegmixError(path, f"not UTF-8 text (byte {err.start})") from None


def one_line(problem: object) -> str:
    """A library's message on one line, cut short: some quote the whole offending input."""
    text = " ".join(str(problem).split())
    return text if len(text) <= MAX_PROBLEM_CHARS else text[:MAX_PROBLEM_CHARS] + "..."


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file strictly: duplicate keys, NaN, Infinity and out-of-range numbers are errors."""
    text = read_input_text(path)

    def unique_keys(pairs: list[tuple[str, Any]]) -> dict:
        mapping = dict(pairs)
        if len(mapping) != len(pairs):
            raise RegmixError(path, f"key {_first_repeat(key for key, _ in pairs)!r} appears twice in one object")
        return mapping

    def finite(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise RegmixError(path, f"number {one_line(text)} is out of range")
        return value

    def no_constant(name: str) -> None:
        raise RegmixError(path, f"{name} is not a number JSON allows")

    try:
        return json.loads(text, object_pairs_hook=unique_keys, parse_float=finite, parse_constant=no_constant)
    except json.JSONDecodeError as err:
        raise RegmixError(path, f"not valid JSON ({one_line(err)})") from None
    except RecursionError:
        raise RegmixError(path, "nested too deeply to be a regmix-ds input") from None
    except ValueError:  # only an integer past Python's digit limit gets here
        raise RegmixError(path, f"holds an integer of more than {sys.get_int_max_str_digits()} digits") from None


def _first_repeat(keys: Iterable[Any]) -> Any:
    seen = set()
    for key in keys:
        if key in seen:
            return key
        seen.add(key)
    return None


class _StrictLoader(yaml.SafeLoader):
    """`safe_load` that refuses duplicate keys and documents whose aliases expand past MAX_INPUT_VALUES."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        merge = "tag:yaml.org,2002:merge"  # `<<: *base` keys may be overridden: that is what they are for
        keys = [key.value for key, _ in node.value if isinstance(key, yaml.ScalarNode) and key.tag != merge]
        repeat = _first_repeat(keys)
        if repeat is not None:
            problem = f"key {repeat!r} appears twice in one mapping"
            raise yaml.constructor.ConstructorError(None, None, problem, node.start_mark)
        return super().construct_mapping(node, deep=deep)

    def get_single_node(self) -> yaml.Node | None:
        root = super().get_single_node()
        if root is not None and _expanded_size(root) > MAX_INPUT_VALUES:
            raise yaml.YAMLError(f"expands to more than {MAX_INPUT_VALUES:,} values (through aliases)")
        return root


def _expanded_size(root: yaml.Node) -> int:
    """How many nodes `root` holds once every alias is expanded, counted without expanding any."""
    sizes: dict[int, int] = {}
    pending: list[tuple[yaml.Node, bool]] = [(root, False)]
    while pending:  # post-order without recursion: nesting depth is the input's to choose
        node, children_done = pending.pop()
        if id(node) in sizes:
            continue
        children = _children(node)
        if children_done:
            sizes[id(node)] = min(1 + sum(sizes[id(child)] for child in children), MAX_INPUT_VALUES + 1)
        else:
            pending.append((node, True))
            pending.extend((child, False) for child in children if id(child) not in sizes)
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def read_yaml(path: str | os.PathLike) -> Any:
    """Parse a YAML file with a safe loader only: user files never construct Python objects."""
    text = read_input_text(path)
    try:
        loader = _StrictLoader(text)  # a SafeLoader: what `yaml.safe_load` does, plus the checks above
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RegmixError(path, f"not valid YAML ({one_line(err.problem or err.context)}{where})") from None
    except yaml.YAMLError as err:
        raise RegmixError(path, f"not valid YAML ({one_line(err)})") from None
    except RecursionError:
        raise RegmixError(path, "nested too deeply to be a regmix-ds input") from None
    except ValueError:  # only an integer past Python's digit limit gets here
        raise RegmixError(path, f"holds an integer of more than {sys.get_int_max_str_digits()} digits") from None


def read_mapping(path: str | os.PathLike) -> dict:
    """Read a JSON or YAML file (by extension) that must hold a mapping at its top level."""
    data = read_json(path) if str(path).endswith(".json") else read_yaml(path)
    if not isinstance(data, dict):
        raise RegmixError(path, "expected a mapping at the top level")
    return data


def read_csv_rows(path: str | os.PathLike) -> list[list[str]]:
    """The rows of CSV file `path` as lists of strings, read within the input bounds."""
    try:
        return list(csv.reader(io.StringIO(read_input_text(path), newline="")))
    except csv.Error as err:
        raise RegmixError(path, f"not valid CSV ({one_line(err)})") from None


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


def replace_directory(new: str | os.PathLike, target: str | os.PathLike) -> None:
    """Put directory `new` where `target` is, so that a reader sees the old directory or the new one.

    Where the file system can swap two names at once (renameat2 RENAME_EXCHANGE: ext4, xfs,
    btrfs, tmpfs on Linux >= 3.15) that is exact, even under SIGKILL. Elsewhere (NFS, some
    parallel file systems) it takes two renames: a kill in the microseconds between them leaves
    the old directory at `.<name>.<random>.old/<name>`, and `target` absent.
    """
    new, target = Path(new), Path(target)
    if not target.exists() or (target.is_dir() and not any(target.iterdir())):
        os.replace(new, target)  # rename(2) also replaces an empty directory
        return
    if _exchange(new, target):
        shutil.rmtree(new, ignore_errors=True)  # `new` now names the old directory
        return
    old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".old"))
    os.replace(target, old / target.name)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths atomically with renameat2(2); False where the system or file system cannot."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(second))


@contextlib.contextmanager
def exclusive(locks: Iterable[str | os.PathLike], wait: bool = False) -> Iterator[bool]:
    """Hold an exclusive lock on every file of `locks` (created if missing), or on none.

    Yields True while this process holds them all; False, holding none, when another process
    holds any (with `wait`, it waits for them instead and always yields True). The locks are
    `flock`s: the kernel drops them when their holder exits or is killed, so a crashed process
    never leaves one stuck.
    """
    handles = []
    try:
        for lock in locks:
            Path(lock).parent.mkdir(parents=True, exist_ok=True)
            handle = open(lock, "a+b")  # noqa: SIM115 - held open until the lock is released
            handles.append(handle)
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
        yield True
    finally:
        for handle in handles:
            handle.close()


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
