"""Wire helpers shared by seed_server.py and seed_client.py.

They speak the original FileSync ("seed") dialect as /work/shared/seed-protocol.md records
it: compact JSON, UTF-8; only TASKS and FILE_HEADER end in a newline; timestamps are naive
local time in Python's isoformat (microseconds only when not zero). Standard library only.
"""

import json
import os
import re
import socket
import sys
import time
from datetime import datetime

GROUP = "224.1.1.1:9999"
# What the original emits: YYYY-MM-DDTHH:MM:SS, then .ffffff only when not zero.
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{6})?\Z")
MAX_VALUE = 64 << 20
ASCII_JSON = False  # --ascii-json: escape non-ASCII as \uXXXX (Python's json default)


class ProtocolError(Exception):
    """The peer broke the original dialect."""


def encode(msg, newline=False):
    """One message as the original writes it: compact JSON, UTF-8, `\\n` if delimited."""
    data = json.dumps(msg, separators=(",", ":"), ensure_ascii=ASCII_JSON).encode()
    return data + b"\n" if newline else data


def mtime_str(path):
    """A file's mtime as the reference client lists it."""
    return datetime.fromtimestamp(os.stat(path).st_mtime).isoformat()


def parse_time(value, what):
    """A naive local timestamp in the exact form the original prints."""
    if not isinstance(value, str) or not TIMESTAMP.match(value):
        raise ProtocolError(f"{what}: not a naive isoformat timestamp: {value!r}")
    if value.endswith(".000000"):
        raise ProtocolError(f"{what}: zero microseconds must be omitted: {value!r}")
    return datetime.fromisoformat(value)


def epoch_ns(dt):
    """Naive local datetime -> epoch nanoseconds, exactly (no float rounding)."""
    return int(dt.replace(microsecond=0).timestamp()) * 10**9 + dt.microsecond * 1000


def split_hostport(s, default_port=9000):
    host, _, port = s.rpartition(":")
    return (host, int(port)) if host else (s, default_port)


def expect(msg, *types):
    if not isinstance(msg, dict) or msg.get("type") not in types:
        raise ProtocolError(f"expected {'/'.join(types)}, got {msg!r:.200}")
    return msg


class Reader:
    """Buffered reads off a TCP stream: JSON values without delimiter, lines, raw bytes."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("connection closed by peer")
        self.buf += chunk

    def json_value(self):
        """One JSON object, however TCP cut it; what follows it stays buffered."""
        decoder = json.JSONDecoder()
        while True:
            text = None
            start = len(self.buf) - len(self.buf.lstrip())
            if start < len(self.buf):
                if self.buf[start] != ord("{"):
                    raise ProtocolError(f"expected a JSON object, got {bytes(self.buf[:40])!r}")
                try:
                    text = self.buf.decode()
                except UnicodeDecodeError as e:
                    if e.start < len(self.buf) - 3:
                        raise ProtocolError(f"invalid UTF-8: {e}") from None
            if text is not None:
                try:
                    value, end = decoder.raw_decode(text, start)
                except json.JSONDecodeError:
                    pass  # incomplete (or broken: the size cap and timeouts end it)
                else:
                    del self.buf[: len(text[:end].encode())]
                    return value
            if len(self.buf) > MAX_VALUE:
                raise ProtocolError("JSON value too large")
            self._fill()

    def single_recv(self):
        """The reference's framing: one recv of at most 8192 bytes, parsed whole."""
        data = bytes(self.buf) if self.buf else self.sock.recv(8192)
        self.buf.clear()
        if not data:
            raise EOFError("connection closed by peer")
        try:
            return json.loads(data)
        except ValueError:
            raise ProtocolError(f"one recv did not hold one JSON value ({len(data)} bytes)") from None

    def line(self):
        """One `\\n`-terminated JSON message (TASKS, FILE_HEADER)."""
        while b"\n" not in self.buf:
            if len(self.buf) > MAX_VALUE:
                raise ProtocolError("line too long")
            self._fill()
        i = self.buf.index(b"\n")
        raw = bytes(self.buf[:i])
        del self.buf[: i + 1]
        try:
            return json.loads(raw)
        except ValueError:
            raise ProtocolError(f"not a JSON line: {raw[:200]!r}") from None

    def copy(self, out, n):
        """Exactly n raw bytes into the file `out`."""
        while n:
            if not self.buf:
                self._fill()
            take = min(n, len(self.buf))
            out.write(self.buf[:take])
            del self.buf[:take]
            n -= take

    def expect_nothing_buffered(self, after):
        """Whitespace is tolerated (json.loads of one recv allows it), anything else not."""
        del self.buf[: len(self.buf) - len(self.buf.lstrip())]
        if self.buf:
            raise ProtocolError(f"unexpected bytes after {after}: {bytes(self.buf[:80])!r}")


class Sender:
    """sendall, or with --segment N: pieces of at most N bytes, TCP_NODELAY, a small pause
    after each, so that the peer sees one message over many recv calls. After SPLIT_MAX
    pieces the rest of the message (a big file's content) goes at once."""

    SPLIT_MAX = 1024

    def __init__(self, sock, segment=0, delay=0.002):
        self.sock, self.segment, self.delay = sock, segment, delay
        if segment:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, data):
        if not self.segment:
            self.sock.sendall(data)
            return
        end = min(len(data), self.segment * self.SPLIT_MAX)
        for i in range(0, end, self.segment):
            self.sock.sendall(data[i : min(i + self.segment, end)])
            time.sleep(self.delay)
        self.sock.sendall(data[end:])


def log(*args, err=False):
    print(*args, file=sys.stderr if err else sys.stdout, flush=True)
