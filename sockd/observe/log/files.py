"""twistd's log file with a ceiling: rotated by size and on C{SIGUSR1}, a bounded number kept, whole lines only.

twistd's own C{twisted.python.logfile.LogFile} keeps every rotated file, and
each rotation renames every older file (C{.1} to C{.2}, ...) on the reactor
thread.  Here rotated files are numbered in the order they were made
(C{sockd.log.1} is the oldest kept, the highest number the newest), so a
rotation is one rename (the current file to the next number), one open and,
once C{--log-max-files} files exist, one unlink (the oldest), whatever the
number kept.  The directory is read once, at open.

A write is split at line ends so that no file grows past
C{--log-max-size} (a single line longer than that gets a file of its own),
and the disk holds at most C{max_files} files of at most C{max_size} bytes.

A short write is continued; a write that fails part-way raises
L{PartialWrite} saying how much got out, and L{CappedLogFile.cut} takes a
half-written line back off the end of the file, so the next line never
starts in the middle of one.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable


class PartialWrite(OSError):
    """A write failed after C{written} bytes of it went out (0: none did).

    It carries the failure's errno and message, so it reads as the C{OSError} it wraps.
    """

    def __init__(self, written: int, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror or str(cause))
        self.written = written


def writeAll(fd: int, data: bytes | memoryview, write: Callable[[int, memoryview], int] = os.write) -> int:
    """Write all of C{data} to C{fd}, continuing short writes; on failure raise L{PartialWrite}."""
    view = memoryview(data)
    done = 0
    while done < len(view):
        try:
            written = write(fd, view[done:])
        except OSError as e:
            raise PartialWrite(done, e) from e
        if written <= 0:  # a zero-length write would loop for ever: report it as the disk being full
            raise PartialWrite(done, OSError(28, "No space left on device (short write)"))
        done += written
    return done


class CappedLogFile:
    """A log file rotated at C{maxSize} bytes and on demand, at most C{maxFiles} files kept (0: no limit).

    @ivar size: bytes in the current file.
    """

    def __init__(self, path: str, maxSize: int, maxFiles: int,
                 write: Callable[[int, memoryview], int] = os.write) -> None:
        self.path = os.path.abspath(path)
        self.maxSize = maxSize
        self.maxFiles = maxFiles
        self._write = write
        directory, base = os.path.split(self.path)
        prefix = base + "."
        numbers = sorted(int(name[len(prefix):]) for name in os.listdir(directory)
                         if name.startswith(prefix) and name[len(prefix):].isdigit())
        #: The numbers of the rotated files kept, oldest first.
        self.rotated: deque[int] = deque(numbers)
        self.fd = self._open()
        self.size = os.fstat(self.fd).st_size
        self._trim()

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)

    def _trim(self) -> None:
        """Delete the oldest rotated files beyond the number kept."""
        if not self.maxFiles:
            return
        while len(self.rotated) > self.maxFiles - 1:
            try:
                os.unlink(f"{self.path}.{self.rotated.popleft()}")
            except FileNotFoundError:
                pass

    def rotate(self) -> None:
        """Start a new file: the current one becomes the newest rotated file (nothing happens if it is empty)."""
        if self.size == 0:
            return
        number = (self.rotated[-1] if self.rotated else 0) + 1
        os.rename(self.path, f"{self.path}.{number}")
        self.rotated.append(number)
        fd = self._open()  # if this fails, lines go on into the renamed file: nothing is lost
        os.close(self.fd)
        self.fd, self.size = fd, 0
        self._trim()

    def write(self, data: bytes) -> None:
        """Append C{data} (whole lines), rotating between lines when the file would grow past C{maxSize}."""
        view = memoryview(data)
        total = len(data)
        done = 0
        while done < total:
            end = total
            if self.maxSize and self.size + (total - done) > self.maxSize:
                room = self.maxSize - self.size
                cut = data.rfind(b"\n", done, done + room) if room > 0 else -1
                if cut >= 0:
                    end = cut + 1
                elif self.size > 0:
                    try:
                        self.rotate()
                    except OSError as e:
                        raise PartialWrite(done, e) from e
                    continue
                else:  # one line longer than a whole file: it gets a file of its own
                    newline = data.find(b"\n", done)
                    end = total if newline < 0 else newline + 1
            try:
                self.size += writeAll(self.fd, view[done:end], self._write)
            except PartialWrite as e:
                self.size += e.written
                raise PartialWrite(done + e.written, e) from e
            done = end

    def cut(self, length: int) -> bool:
        """Take the last C{length} bytes (a half-written line) off the file; whether that worked."""
        try:
            os.ftruncate(self.fd, self.size - length)
        except OSError:
            return False
        self.size -= length
        return True

    def close(self) -> None:
        """Close the file (at exit)."""
        os.close(self.fd)


__all__ = ["CappedLogFile", "PartialWrite", "writeAll"]
