"""A filesystem that can crash like a machine does: what was not fsynced is gone.

A kill -9 of Redis loses nothing under any ``appendfsync``: what Redis wrote sits in the
kernel's page cache and reaches the disk later. An OS crash or a power cut loses that
cache. Linux offers no way to drop dirty pages without writing them, so this FUSE
filesystem keeps the page cache itself:

* the *disk* is a real folder: what survives a crash;
* ``write`` and ``truncate`` change only the in-memory content of the file (the page
  cache); reads see it, as they would;
* ``fsync``/``fdatasync`` of a file writes its changed bytes to the disk;
* closing a file syncs nothing (as on Linux);
* names (create, rename, unlink, mkdir) go to the disk at once: more forgiving than a
  real filesystem, which may also lose a name whose directory was not fsynced. The
  file *contents* are what the appendfsync policies differ in.

``mkdir <mount>/.crash`` is the crash: every unsynced byte is dropped and nothing written
after it reaches the disk. ``mkdir <mount>/.crash-torn`` keeps the first
:data:`TORN_BYTES` of each file's unsynced tail (a disk that had written part of the
cache): a torn last record.
Unmount, mount again (:class:`CrashDisk`), and the mount shows what the disk kept.

Run as ``python -m tests.crashfs DISK MOUNTPOINT`` (libfuse 3 and the mfusepy bindings;
root, or fusermount3).
"""

from __future__ import annotations

import errno
import itertools
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from mfusepy import FUSE, FuseOSError, Operations

CRASH = "/.crash"
CRASH_TORN = "/.crash-torn"
#: Unsynced bytes a torn crash keeps per file: part of a record, not a round number.
TORN_BYTES = 1000


class CrashFS(Operations):  # type: ignore[misc]
    """The FUSE operations (mfusepy's high-level API, str paths)."""

    use_ns = True  # times in nanoseconds (mfusepy's current convention)

    def __init__(self, disk: Path) -> None:
        self.disk = disk
        self._mutex = threading.Lock()
        #: path -> the file's content as the OS sees it (the page cache)
        self.cache: dict[str, bytearray] = {}
        #: path -> first offset changed since the last fsync
        self.dirty_from: dict[str, int] = {}
        self.crashed = False
        self.handles = itertools.count(1)

    def _disk(self, path: str) -> str:
        return str(self.disk) + path

    def _content(self, path: str) -> bytearray:
        content = self.cache.get(path)
        if content is None:
            with open(self._disk(path), "rb") as handle:
                content = bytearray(handle.read())
            self.cache[path] = content
        return content

    def _changed(self, path: str, offset: int) -> None:
        self.dirty_from[path] = min(offset, self.dirty_from.get(path, offset))

    def _sync(self, path: str, keep: int | None = None) -> None:
        """Write the file's changed bytes (only ``keep`` of them, if given) to the disk."""
        start = self.dirty_from.pop(path, None)
        content = self.cache.get(path)
        if start is None or content is None or not os.path.exists(self._disk(path)):
            return
        end = len(content) if keep is None else min(len(content), start + keep)
        with open(self._disk(path), "r+b") as handle:
            handle.seek(start)
            handle.write(content[start:end])
            if keep is None:
                handle.truncate(len(content))

    def crash(self, torn: bool) -> None:
        for path in list(self.dirty_from):
            if torn:
                self._sync(path, keep=TORN_BYTES)
        self.cache.clear()
        self.dirty_from.clear()
        self.crashed = True

    # --- names: straight to the disk -----------------------------------------------------

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        with self._mutex:
            if path in (CRASH, CRASH_TORN) and self.crashed:
                path = "/"  # the control entry answers as a folder, once it did its work
            try:
                st = os.lstat(self._disk(path))
            except FileNotFoundError:
                raise FuseOSError(errno.ENOENT) from None
            attrs = {
                key: getattr(st, key)
                for key in (
                    "st_mode",
                    "st_nlink",
                    "st_uid",
                    "st_gid",
                    "st_size",
                    "st_atime",
                    "st_mtime",
                    "st_ctime",
                )
            }
            if path in self.cache:
                attrs["st_size"] = len(self.cache[path])
            return attrs

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(self._disk(path))]

    def mkdir(self, path: str, mode: int) -> int:
        with self._mutex:
            if path in (CRASH, CRASH_TORN):
                self.crash(torn=path == CRASH_TORN)
                return 0
            os.mkdir(self._disk(path), mode)
            return 0

    def rmdir(self, path: str) -> int:
        os.rmdir(self._disk(path))
        return 0

    def unlink(self, path: str) -> int:
        with self._mutex:
            os.unlink(self._disk(path))
            self.cache.pop(path, None)
            self.dirty_from.pop(path, None)
            return 0

    def rename(self, old: str, new: str) -> int:
        with self._mutex:
            os.rename(self._disk(old), self._disk(new))
            for table in (self.cache, self.dirty_from):
                table.pop(new, None)
                if old in table:
                    table[new] = table.pop(old)  # type: ignore[assignment]
            return 0

    def chmod(self, path: str, mode: int) -> int:
        os.chmod(self._disk(path), mode)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        os.chown(self._disk(path), uid, gid)
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        st = os.statvfs(self._disk(path))
        return {
            key: getattr(st, key)
            for key in (
                "f_bsize",
                "f_frsize",
                "f_blocks",
                "f_bfree",
                "f_bavail",
                "f_files",
                "f_ffree",
                "f_namemax",
            )
        }

    # --- contents: the page cache --------------------------------------------------------

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        with self._mutex:
            os.close(os.open(self._disk(path), os.O_CREAT | os.O_WRONLY, mode))
            self.cache[path] = bytearray()
            return next(self.handles)

    def open(self, path: str, flags: int) -> int:
        with self._mutex:
            if flags & os.O_TRUNC and not self.crashed:
                self._content(path).clear()
                self._changed(path, 0)
            return next(self.handles)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        with self._mutex:
            return bytes(self._content(path)[offset : offset + size])

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        with self._mutex:
            if self.crashed:
                return len(data)  # into a page cache that no longer reaches any disk
            content = self._content(path)
            if offset > len(content):
                content.extend(bytes(offset - len(content)))
            content[offset : offset + len(data)] = data
            self._changed(path, offset)
            return len(data)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        with self._mutex:
            if self.crashed:
                return 0
            content = self._content(path)
            if length < len(content):
                del content[length:]
            else:
                content.extend(bytes(length - len(content)))
            self._changed(path, min(length, len(content)))
            return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        with self._mutex:
            if not self.crashed:
                self._sync(path)
            return 0

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        return 0  # names are on the disk already

    def flush(self, path: str, fh: int) -> int:
        return 0  # close() syncs nothing

    def release(self, path: str, fh: int) -> int:
        return 0


class CrashDisk:
    """A :class:`CrashFS` mount on ``mount`` over the folder ``disk``, run as a process."""

    def __init__(self, disk: Path, mount: Path) -> None:
        self.disk, self.mount = disk, mount
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> CrashDisk:
        self.disk.mkdir(parents=True, exist_ok=True)
        self.mount.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.crashfs", str(self.disk), str(self.mount)],
            cwd=Path(__file__).resolve().parent.parent,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while not os.path.ismount(self.mount):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"crashfs did not mount on {self.mount}")
            time.sleep(0.05)
        return self

    def crash(self, torn: bool = False) -> None:
        """The machine goes down: what was not fsynced never reaches the disk."""
        os.mkdir(self.mount / (CRASH_TORN if torn else CRASH).lstrip("/"))

    def stop(self) -> None:
        """Unmount (after :meth:`crash`, the disk keeps only what was synced)."""
        if self.process is None:
            return
        if os.path.ismount(self.mount):
            umount = shutil.which("fusermount3")
            command = [umount, "-u", str(self.mount)] if umount else ["umount", str(self.mount)]
            subprocess.run(command, check=False, capture_output=True)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            subprocess.run(["umount", "-l", str(self.mount)], check=False, capture_output=True)
        self.process = None


def main(argv: list[str]) -> int:
    disk, mount = Path(argv[0]).resolve(), argv[1]
    FUSE(CrashFS(disk), mount, foreground=True, nothreads=True, fsname="crashfs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
