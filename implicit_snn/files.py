"""Files written so that a crash never leaves a half-written one behind, and torch files that say
when they are not what was written."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import torch


class WriteError(OSError):
    """A file could not be written (a full disk, no permission, a folder or file in the way). Its
    message names the file asked for, never the temporary file it was being written through."""

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"


def _write_error(path: str | os.PathLike, error: OSError) -> WriteError:
    if isinstance(error, WriteError):
        return error
    return WriteError(error.errno, error.strerror or str(error), str(path))


class CorruptFile(ValueError):
    """A file that is not what was written: empty, truncated, damaged, or another kind of file."""


def _new_file_mode() -> int:
    """The permissions ``open`` gives a new file under the current umask (mkstemp's are 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


class _Output:
    """The handle ``atomic_file`` yields: a failed write or seek names the file being written."""

    def __init__(self, handle: BinaryIO, path: Path):
        self._handle, self._path = handle, path

    def _call(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self._handle, method)(*args)
        except OSError as error:
            raise _write_error(self._path, error) from error

    def write(self, data) -> int:
        return self._call("write", data)

    def flush(self) -> None:
        self._call("flush")

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._call("seek", offset, whence)

    def tell(self) -> int:
        return self._call("tell")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary handle whose contents replace ``path`` only when the block ends without error.

    It writes a temporary file in the same folder, syncs it to disk and renames it over ``path``,
    so readers see the old file or the whole new one; the new file gets the usual permissions
    (0666 less the umask), so that a shared run directory stays readable to the group. On any
    failure the temporary file is deleted and ``path`` is as it was; a failure to write (a full
    disk, no permission, ``path`` a folder) is a ``WriteError`` naming ``path``.
    """
    path = Path(path)
    if path.is_dir():
        raise WriteError(errno.EISDIR, "it is a folder", str(path))
    tmp, in_block = None, False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            in_block = True
            yield _Output(handle, path)
            in_block = False
            handle.flush()
            os.fsync(handle.fileno())
            os.fchmod(handle.fileno(), _new_file_mode())
        os.replace(tmp, path)
    except BaseException as error:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        # The block's own errors (reading a source, say) stay as they are; its writes name ``path``.
        if isinstance(error, OSError) and not in_block:
            raise _write_error(path, error) from error
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see ``atomic_file``)."""
    with atomic_file(path) as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see ``atomic_file``)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def check_writable(path: str | os.PathLike, *, folder: bool = False) -> None:
    """Raise ``WriteError`` naming ``path`` where a file (or, with ``folder``, a folder of files)
    could not be written there: something of the other kind is in the way, or the nearest existing
    folder above it does not take new files. Creates nothing (it tries an unnamed temporary file)."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        raise WriteError(errno.EISDIR if path.is_dir() else errno.ENOTDIR,
                         "it is a folder" if path.is_dir() else "it is a file, not a folder", str(path))
    where = path if folder and path.is_dir() else path.parent
    while not where.exists() and where != where.parent:
        where = where.parent
    if not where.is_dir():
        raise WriteError(errno.ENOTDIR, f"{where} is a file, not a folder", str(path))
    try:
        tempfile.TemporaryFile(dir=where).close()
    except OSError as error:
        raise WriteError(error.errno, f"{where}: {error.strerror or error}", str(path)) from None


# -- torch files with a digest --------------------------------------------------------------------
# torch.save writes a zip archive. Its records carry CRC32s, but torch.load checks none of them: a
# damaged tensor loads silently. So ``atomic_torch_save`` puts the SHA-256 of the archive, as
# torch.save wrote it, into the zip's comment (a standard field that torch.load and zip tools read
# past), and ``verify_torch_file`` recomputes it over every byte before anything is loaded.
_SEAL = b"implicit-snn sha256 "
_COMMENT_LEN = len(_SEAL) + 64
_END = b"PK\x05\x06"  # the zip's end-of-central-directory record: 22 bytes and the comment


class _Sealing:
    """What torch.save writes to: passes every byte on, hashing it and keeping the last 22."""

    def __init__(self, handle: BinaryIO):
        self.handle, self.sha, self.tail, self.error = handle, hashlib.sha256(), b"", None

    def write(self, data) -> int:
        try:
            self.handle.write(data)
        except BaseException as error:  # torch.save reports it as a RuntimeError; keep the real one
            self.error = error
            raise
        self.sha.update(data)
        self.tail = (self.tail + bytes(data[-22:]))[-22:]
        return len(data)

    def flush(self) -> None:
        self.handle.flush()


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically, with a SHA-256 of the archive that
    ``verify_torch_file`` checks; ``torch.load`` reads the file as any other."""
    with atomic_file(path) as handle:
        sealing = _Sealing(handle)
        try:
            torch.save(obj, sealing)
        except BaseException:
            if sealing.error is not None:
                raise sealing.error from None
            raise
        if not (sealing.tail[:4] == _END and sealing.tail[-2:] == b"\0\0"):
            raise RuntimeError("torch.save did not end its archive with an end record without comment; "
                               "cannot add the digest")
        handle.seek(-2, os.SEEK_END)
        handle.write(_COMMENT_LEN.to_bytes(2, "little") + _SEAL + sealing.sha.hexdigest().encode("ascii"))
    return Path(path)


def verify_torch_file(path: str | os.PathLike) -> bool:
    """Check that the torch file at ``path`` is whole: its digest (``atomic_torch_save``) over
    every byte, or for a file saved without one its zip records' CRC32s. Returns whether it had a
    digest; raises ``CorruptFile`` naming ``path`` if it is empty, truncated, damaged or not a torch
    zip archive, and ``OSError`` if it cannot be read."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise CorruptFile(f"{path} is empty")
    with open(path, "rb") as file:
        start = max(0, size - 22 - _COMMENT_LEN - 64)  # room for a digest cut short or with bytes after it
        file.seek(start)
        tail = file.read()
        at = tail.rfind(_END)
        if at >= 0 and int.from_bytes(tail[at + 20:at + 22], "little") == _COMMENT_LEN:
            comment = tail[at + 22:]
            if len(comment) != _COMMENT_LEN or not comment.startswith(_SEAL):
                raise CorruptFile(f"{path} is damaged: its digest is cut short, altered or followed by other bytes")
            sha, remaining = hashlib.sha256(), start + at + 20
            file.seek(0)
            while remaining > 0:
                chunk = file.read(min(remaining, 1 << 20))
                sha.update(chunk)
                remaining -= len(chunk)
            sha.update(b"\0\0")  # the comment's length as torch.save wrote it
            if sha.hexdigest().encode("ascii") != comment[len(_SEAL):]:
                raise CorruptFile(f"{path} is damaged: its bytes do not match the SHA-256 it was saved with")
            return True
    # No digest (saved before they were added, or by torch.save itself): the zip's own CRC32s.
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError):
        raise CorruptFile(f"{path} is not a whole zip archive as torch.save writes (truncated, or another "
                          "kind of file)") from None
    if bad is not None:
        raise CorruptFile(f"{path} is damaged: its record {bad} fails its CRC32 check")
    return False


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
