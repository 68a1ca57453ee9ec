"""The wire protocol between the grader and the processes in the box: JSON lines, bounded.

Every channel that crosses the sandbox's wall (the nursery's socket, the re-check's pipes, the
audit pipe) carries one JSON object per line. The reading side never trusts the writing side:
lines and totals are bounded (a flood ends the channel, it never grows the reader's memory), and
a reader with a deadline never blocks past it. This module imports nothing of the course and
is imported by both sides.
"""
from __future__ import annotations

import json
import os
import select
import socket
import time

MAX_LINE = 1 << 20        # one message (a request holds a connection file or a test cell)
MAX_AUDIT_EVENTS = 100    # audit events kept per run; the rest are dropped
MAX_AUDIT_DETAIL = 300    # characters of one audit event's detail


def encode(message: dict) -> bytes:
    return (json.dumps(message) + "\n").encode()


def send(sock: socket.socket, message: dict, fds: list[int] = ()) -> None:
    """One message on a Unix socket, with file descriptors attached (SCM_RIGHTS) if any."""
    data = encode(message)
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.sendall(data)


def write(fd: int, message: dict) -> None:
    """One message on a pipe, all of it (a signal can cut a large write short)."""
    data = memoryview(encode(message))
    while data:
        data = data[os.write(fd, data):]


def write_within(fd: int, message: dict, wait_s: float, beat=None, every_s: float = 1.0) -> bool:
    """One message on a non-blocking pipe whose reader may have stopped reading: False when it
    did not all go in ``wait_s`` seconds or the pipe is closed; ``beat()`` every ``every_s``
    while waiting."""
    data = memoryview(encode(message))
    deadline = time.monotonic() + wait_s
    while data:
        try:
            data = data[os.write(fd, data):]
            continue
        except BlockingIOError:
            pass
        except OSError:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        _, ready, _ = select.select([], [fd], [], min(left, every_s))
        if not ready and beat is not None:
            beat()
    return True


class LineReader:
    """JSON lines from a socket or a pipe, with a deadline and a bound on a line's length.

    ``read(timeout)`` returns the next message, ``None`` at end of stream, after a flood (a line
    longer than ``MAX_LINE``) or for a line that is not a JSON object, and raises ``TimeoutError``
    when nothing complete arrived in ``timeout`` seconds (``None``: wait for ever). File
    descriptors passed with a message on a socket collect in ``fds``."""

    def __init__(self, source: socket.socket | int, max_line: int = MAX_LINE) -> None:
        self.source, self.max_line = source, max_line
        self.buffer, self.fds = bytearray(), []
        self.scanned = 0  # how much of the buffer holds no newline: each byte is searched once
        self.closed = False

    def _receive(self) -> bytes:
        if isinstance(self.source, socket.socket):
            data, fds, _, _ = socket.recv_fds(self.source, 65536, 4)
            self.fds += fds
            return data
        return os.read(self.source, 65536)

    def read_raw(self, timeout: float | None) -> bytes | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (end := self.buffer.find(b"\n", self.scanned)) < 0:
            self.scanned = len(self.buffer)
            if self.closed:
                return None
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self.source], [], [], left)
            if not ready:
                raise TimeoutError
            data = self._receive()
            if not data:
                self.closed = True
                return None
            self.buffer += data
            if len(self.buffer) > self.max_line:
                self.closed, self.buffer, self.scanned = True, bytearray(), 0
                return None
        line = bytes(self.buffer[:end])
        del self.buffer[:end + 1]
        self.scanned = 0
        return line

    def read(self, timeout: float | None) -> dict | None:
        line = self.read_raw(timeout)
        if line is None:
            return None
        try:
            message = json.loads(line)
        except (ValueError, RecursionError):  # nested past the parser's depth
            return None
        return message if isinstance(message, dict) else None


def collect_audit(fd: int, into: list[dict]) -> None:
    """Read a run's audit channel until it closes: at most ``MAX_AUDIT_EVENTS`` events of bounded
    size are kept, a line longer than ``MAX_LINE`` ends the reading (the channel is the student's
    to flood; the grader's memory is not)."""
    reader = LineReader(fd)
    try:
        while True:
            line = reader.read_raw(None)
            if line is None:
                return
            if len(into) >= MAX_AUDIT_EVENTS:
                continue
            try:
                event = json.loads(line)
                into.append({"kind": str(event["kind"])[:20],
                             "detail": str(event["detail"])[:MAX_AUDIT_DETAIL]})
            except (ValueError, KeyError, TypeError):
                into.append({"kind": "garbage", "detail": "unreadable audit line"})
    finally:
        os.close(fd)
