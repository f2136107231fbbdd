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


_TAGS = {
    "i": lambda v: int(v, 16), "F": float, "t": tuple, "f": frozenset, "s": set,
    "d": lambda v: {k: w for k, w in v}, "b": bytes.fromhex, "c": lambda v: complex(*v),
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


def strict_eq(a, b):
    """`==` in test asserts: bool is not a number, list is not tuple; int and float compare by value."""
    ta, tb = type(a), type(b)
    if ta is bool or tb is bool:
        return ta is tb and a == b
    if ta in (int, float) and tb in (int, float):
        return a == b
    if ta in (list, tuple) and tb in (list, tuple):
        return ta is tb and len(a) == len(b) and all(strict_eq(x, y) for x, y in zip(a, b))
    if ta is dict and tb is dict:
        return a.keys() == b.keys() and all(strict_eq(a[k], b[k]) for k in a)
    return a == b


def _short(e, n=500):
    try:
        return str(e)[:n]
    except BaseException:
        return "<unprintable exception>"
