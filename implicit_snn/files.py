"""Files written so that a crash never leaves a half-written one behind."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Iterator


def _new_file_mode() -> int:
    """The permissions ``open`` gives a new file under the current umask (mkstemp's are 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary handle whose contents replace ``path`` only when the block ends without error.

    It writes a temporary file in the same folder, syncs it to disk and renames it over ``path``,
    so readers see the old file or the whole new one; the new file gets the usual permissions
    (0666 less the umask), so that a shared run directory stays readable to the group.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
            os.fchmod(handle.fileno(), _new_file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see ``atomic_file``)."""
    with atomic_file(path) as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see ``atomic_file``)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def read_jsonl(path: str | os.PathLike) -> list[Any]:
    """The objects of a JSON-lines file, blank lines skipped; a bad line is a ValueError naming it."""
    rows = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise ValueError(f"{path} line {number} is not JSON") from None
    return rows
