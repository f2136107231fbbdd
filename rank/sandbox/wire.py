"""Framing and the plain-data codec shared by rank.sandbox (host) and the in-sandbox server.

Standard library only. Messages are 4-byte big-endian lengths followed by JSON. Values from a candidate
cross as a tagged JSON of plain data and are decoded into exact built-in types (see `encode`, `_hook`);
nothing is ever unpickled. Imported by the host and, as source, inside the sandbox (rank/sandbox/runners.py).
"""
import json
import os
import select
import struct
import time

MAX_MSG = 8 << 20          # bytes; a larger value from C is an error, not a pass


_ENCODE = json.JSONEncoder(separators=(",", ":")).encode     # json.dumps(obj, separators=...) without
                                                                # building an encoder per message


def frame(obj):
    data = _ENCODE(obj).encode()
    return struct.pack(">I", len(data)) + data


def send(fd, obj):
    write_all(fd, frame(obj))


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class Timeout(Exception):
    pass


class Closed(Exception):
    pass


def _read_exact(fd, n, deadline):
    chunks = []
    while n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise Timeout()
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            raise Closed()
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def recv(fd, deadline=None, hook=None):
    """One framed message. With hook=_hook (data from C) every JSON object must be a value tag."""
    (n,) = struct.unpack(">I", _read_exact(fd, 4, deadline))
    if n > MAX_MSG:
        raise ValueError(f"message of {n} bytes exceeds {MAX_MSG}")
    return json.loads(_read_exact(fd, n, deadline), object_hook=hook)


class Reader:
    """Framed messages from one fd that only this process reads, taken in large reads: one read (and one
    select) can bring several frames, e.g. answers C wrote back to back, or all prefetched calls. A frame
    already received whole is returned without waiting; otherwise as `recv` (deadline, MAX_MSG)."""

    def __init__(self, fd):
        self.fd, self.buf = fd, b""

    def _fill(self, need, deadline):
        chunks, have = [self.buf], len(self.buf)
        while have < need:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                    self.buf = b"".join(chunks)
                    raise Timeout()
            chunk = os.read(self.fd, min(max(need - have, 1 << 16), 1 << 20))
            if not chunk:
                self.buf = b"".join(chunks)
                raise Closed()
            chunks.append(chunk)
            have += len(chunk)
        self.buf = b"".join(chunks)

    def recv(self, deadline=None, hook=None):
        if len(self.buf) < 4:
            self._fill(4, deadline)
        (n,) = struct.unpack_from(">I", self.buf)
        if n > MAX_MSG:
            raise ValueError(f"message of {n} bytes exceeds {MAX_MSG}")
        if len(self.buf) < 4 + n:
            self._fill(4 + n, deadline)
        data, self.buf = self.buf[4:4 + n], self.buf[4 + n:]
        return json.loads(data, object_hook=hook)


class Unsupported(TypeError):
    pass


def encode(x, depth=0):
    """Plain data -> JSON-able tree. Subclasses of built-ins are read through the base type's own C
    methods, so no candidate-defined method decides the value (a forged __eq__ is simply dropped)."""
    if depth > 200:
        raise Unsupported("value nested deeper than 200")
    t, d = type(x), depth + 1
    if x is None or t is bool:
        return x
    if isinstance(x, int):
        x = int.__index__(x)
        return x if -(1 << 53) < x < (1 << 53) else {"i": hex(x)}
    if isinstance(x, float):
        return {"F": float.__repr__(x)} if x != x or x in (float("inf"), float("-inf")) else float.__float__(x)
    if isinstance(x, str):
        return str.__str__(x)
    if isinstance(x, list):
        return [encode(v, d) for v in list.copy(x)]
    if isinstance(x, tuple):
        return {"t": [encode(v, d) for v in tuple.__getitem__(x, slice(None))]}
    if isinstance(x, dict):
        return {"d": [[encode(k, d), encode(v, d)] for k, v in list(dict.items(x))]}
    if isinstance(x, frozenset):
        return {"f": [encode(v, d) for v in list(frozenset.__iter__(x))]}
    if isinstance(x, set):
        return {"s": [encode(v, d) for v in list(set.__iter__(x))]}
    if isinstance(x, (bytes, bytearray)):
        return {"b": bytes.hex(bytes(memoryview(x)))}
    if isinstance(x, complex):
        return {"c": [complex.real.__get__(x), complex.imag.__get__(x)]}
    if t is type and x in _TYPES.values():
        return {"T": x.__name__}                    # e.g. MBPP's remove_datatype(..., int)
    raise Unsupported(f"a value of type {t.__name__!s} is not plain data")


_TYPES = {t.__name__: t for t in (int, float, str, bytes, bool, list, tuple, dict, set, frozenset, complex)}


def _set(items):
    """set(items), one insert at a time: crafted hash collisions make a single set() call quadratic in
    C, where the job timer (a signal) cannot interrupt it; between inserts it can."""
    out = set()
    for x in items:
        out.add(x)
    return out


def _dict(pairs):
    out = {}
    for k, w in pairs:
        out[k] = w
    return out


_TAGS = {
    "i": lambda v: int(v, 16), "F": float, "t": tuple, "f": lambda v: frozenset(_set(v)), "s": _set,
    "d": _dict, "b": bytes.fromhex, "c": lambda v: complex(*v),
    "T": lambda v: _TYPES[v],
}


def _hook(obj):
    if len(obj) != 1:
        raise ValueError("malformed value")
    (tag, val), = obj.items()
    if tag not in _TAGS:
        raise ValueError("malformed value")
    if tag in "tfsdc" and type(val) is not list or tag in "iFbT" and type(val) is not str:
        raise ValueError("malformed value")
    try:
        return _TAGS[tag](val)
    except (KeyError, ValueError, TypeError, OverflowError):
        raise ValueError("malformed value") from None


def clean_text(x, n):
    """At most `n` characters of a string from anywhere (a candidate's message, its output), safe to
    encode as UTF-8 (lone surrogates escaped); anything that is not a str is not shown."""
    if type(x) is not str:
        return f"<{type(x).__name__}>"
    x = x[:n]
    try:
        x.encode("utf-8")
        return x
    except UnicodeEncodeError:
        return x.encode("utf-8", "backslashreplace").decode("utf-8")


def _short(e, n=500):
    try:
        return clean_text(str(e), n)
    except Exception:
        return "<unprintable exception>"
