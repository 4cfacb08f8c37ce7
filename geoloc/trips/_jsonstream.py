"""Walk a large JSON document one element at a time, in bounded memory.

Google Takeout's location history holds 10⁶ points and more in one array (hundreds of MB);
``json.load`` would hold all of it as Python objects (about 1 GB per 10⁶ points). Here the
document's outer structure (the top-level object's keys, the big arrays) is walked by hand, and
each element of an array is decoded on its own by the standard library's C decoder
(``json.JSONDecoder.raw_decode``) from a window of the file read :data:`CHUNK` characters at a
time: memory is one window plus one element, whatever the file's size.

Why not ``ijson``: its fast backend needs the yajl C library at install time, and its pure-Python
backend is several times slower than ``raw_decode`` on each element; the structures walked here
are two levels deep, which this small module covers without a dependency.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any, TextIO

from geoloc.trips._common import CHUNK, BadTrack

#: One element larger than this is not a location-history record: refused, not buffered.
MAX_ELEMENT = 64 << 20

_SPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
_SCAN = _DECODER.scan_once  # the C scanner: (value, end) or StopIteration


class JsonStream:
    """A cursor over a text stream of JSON: ``peek``, ``value``, ``items`` and ``keys``."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._buf = ""
        self._pos = 0
        self._eof = False
        self._lines_before = 0  # newlines in the text already dropped from the window

    def line(self, pos: int | None = None) -> int:
        """The line number (from 1) of a position in the window."""
        return self._lines_before + self._buf.count("\n", 0, self._pos if pos is None else pos) + 1

    def _more(self) -> bool:
        """Read the next chunk into the window, dropping what was consumed; False at the end."""
        if self._eof:
            return False
        chunk = self._stream.read(CHUNK)
        if not chunk:
            self._eof = True
            return False
        self._lines_before += self._buf.count("\n", 0, self._pos)
        self._buf = self._buf[self._pos:] + chunk
        self._pos = 0
        return True

    def peek(self) -> str:
        """The next character that is not white space ('' at the end), without consuming it."""
        while True:
            self._pos = _SPACE.match(self._buf, self._pos).end()
            if self._pos < len(self._buf):
                return self._buf[self._pos]
            if not self._more():
                return ""

    def expect(self, char: str) -> None:
        found = self.peek()
        if found != char:
            self.fail(f"expected {char!r}, found {found!r}" if found else f"expected {char!r}, found the end")
        self._pos += 1

    def fail(self, reason: str, pos: int | None = None):
        raise BadTrack(f"is not valid JSON (line {self.line(pos)}: {reason})")

    def value(self) -> Any:
        """Decode the next whole value (an element, a key, a small object) and move past it."""
        self.peek()
        while True:
            try:
                obj, end = _DECODER.raw_decode(self._buf, self._pos)
            except json.JSONDecodeError as exc:
                # Truncated by the window's end (retry with more text), or malformed (fail).
                near_end = exc.pos >= len(self._buf) - 16 or exc.msg.startswith("Unterminated string")
                if near_end and not self._eof and len(self._buf) - self._pos <= MAX_ELEMENT:
                    self._more()
                    continue
                if len(self._buf) - self._pos > MAX_ELEMENT:
                    self.fail(f"an element larger than {MAX_ELEMENT >> 20} MiB")
                self.fail(exc.msg, exc.pos)
            if end == len(self._buf) and not self._eof and self._more():
                continue  # a number cut by the window's end would read as a shorter number
            self._pos = end
            return obj

    def items(self) -> Iterator[Any]:
        """The elements of the array that starts here, decoded one at a time."""
        self.expect("[")
        if self.peek() == "]":
            self._pos += 1
            return
        space, scan = _SPACE.match, _SCAN
        while True:
            # Fast path: the element and the separator after it lie inside the window. Anything
            # else (the window's end, a malformed element) goes through value() and peek().
            buf = self._buf
            pos = space(buf, self._pos).end()
            try:
                obj, end = scan(buf, pos)
                after = space(buf, end).end()
                char = buf[after]
            except (StopIteration, json.JSONDecodeError, IndexError):
                self._pos = pos
                obj = self.value()
                char = self.peek()
                after = self._pos
            self._pos = after + 1
            yield obj
            if char == ",":
                continue
            if char == "]":
                return
            self._pos = after
            self.fail(f"expected ',' or ']' after an element, found {char!r}" if char
                      else "the file ends inside an array")

    def keys(self) -> Iterator[str]:
        """The keys of the object that starts here; the caller consumes each key's value."""
        self.expect("{")
        if self.peek() == "}":
            self._pos += 1
            return
        while True:
            if self.peek() != '"':
                self.fail("expected a key in double quotes")
            key = self.value()
            self.expect(":")
            yield key
            char = self.peek()
            self._pos += 1
            if char == "}":
                return
            if char != ",":
                self._pos -= 1
                self.fail(f"expected ',' or '}}' after a value, found {char!r}" if char
                          else "the file ends inside an object")

    def skip(self) -> None:
        """Consume the next value without keeping it (arrays element by element)."""
        if self.peek() == "[":
            for _ in self.items():
                pass
        else:
            self.value()

    def at_end(self) -> bool:
        return self.peek() == ""
