"""Random, well-formed protobuf messages built from descriptors alone.

Every value is legal on the wire (the message serializes), but chosen to be
hostile: empty, huge and unicode strings, integer extremes, timestamps outside
years 1-9999, enum numbers nobody defined, deep nesting, long repeated fields
and maps. A share of values comes from `known` (names and ids that exist on
the server) so that requests reach past "not found" into the code behind it.

Seeded: the same seed and the same sequence of calls give the same messages.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

T = FieldDescriptor
INT_RANGES = {
    T.TYPE_INT32: (-(2**31), 2**31 - 1),
    T.TYPE_SINT32: (-(2**31), 2**31 - 1),
    T.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    T.TYPE_INT64: (-(2**63), 2**63 - 1),
    T.TYPE_SINT64: (-(2**63), 2**63 - 1),
    T.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    T.TYPE_UINT32: (0, 2**32 - 1),
    T.TYPE_FIXED32: (0, 2**32 - 1),
    T.TYPE_UINT64: (0, 2**64 - 1),
    T.TYPE_FIXED64: (0, 2**64 - 1),
}

NASTY = [
    "\x00",
    "a\x00b",
    " ",
    "\t\n\r",
    "../../../../etc/passwd",
    "'; DROP TABLE runs; --",
    '"quoted" \\backslash\\',
    "%s%s%s%n",
    "{}{0}{name}",
    "${HOME}",
    "$(TYGER_RUN_ID)",
    "$$",
    "$(",
    "name/versions/1",
    "name/versions/0",
    "name/versions/-1",
    "name/versions/99999999999999999999999",
    "/versions/1",
    "localhost/muster-busybox:latest",
    "docker.io/library/busybox@sha256:" + "0" * 64,
    "registry.example:5000",
    "[::1]:5000",
    "127.0.0.1:0",
    "1Ei",
    "9999999999999999Ei",
    "1e309",
    "-1",
    "0.0000001m",
    "NaN",
    "inf",
    "0x10",
    "100m",
    "64Mi",
    "eyJxIjp7fSwiYyI6MX0",  # base64 JSON: a forged page token
    "e30",
    "W1tbW1tbW1tbXV1dXV1dXV1d",
    "mst_" + "A" * 43,
    "msj_" + "A" * 43,
    "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n",
    "\u202e\u2066rtl\u2069",
    "\ufeffbom",
    "e\u0301\u0301\u0301",
    "💥" * 8,
    "\U0010fffd",
    "ÿ" * 3,
    "a" * 63,
    "a" * 64,
    "A-Z",
    ".hidden",
    "-leading-dash",
    "x.y_z-1",
]

# Unicode without surrogates (protobuf refuses to serialize those): planes 0-2 and 14.
_UNICODE_RANGES = [(0x20, 0xD7FF), (0xE000, 0xFFFD), (0x10000, 0x2FFFF), (0xE0000, 0xE01EF)]


@dataclass
class Known:
    """Values that exist on the server; the generator picks them now and then."""

    strings: list[str] = field(default_factory=list)
    ints: list[int] = field(default_factory=list)

    def add(self, *values: str | int) -> None:
        for v in values:
            target = self.ints if isinstance(v, int) else self.strings
            if v not in target:
                target.append(v)  # type: ignore[arg-type]


class Generator:
    """Builds random messages of any descriptor."""

    def __init__(
        self,
        rng: random.Random,
        known: Known | None = None,
        max_depth: int = 5,
        huge: float = 0.004,
        avoid: Callable[[str], bool] = lambda _s: False,
    ) -> None:
        self.rng = rng
        self.known = known or Known()
        self.max_depth = max_depth
        self.huge = huge  # chance that a string is huge (up to past the 4 MiB message limit)
        self.avoid = avoid  # strings never to produce (e.g. the admin token's name)

    # -- scalars ---------------------------------------------------------------

    def string(self) -> str:
        r = self.rng
        roll = r.random()
        if roll < self.huge:
            n = r.choice([10_000, 100_000, 1_000_000, 5_000_000])
            text = r.choice(["x", "é", "💥", "ab"]) * (n // 2)
        elif roll < 0.12:
            text = ""
        elif roll < 0.30 and self.known.strings:
            text = r.choice(self.known.strings)
        elif roll < 0.45:
            text = r.choice(NASTY)
        elif roll < 0.65:
            alphabet = string.ascii_lowercase + string.digits + "-._"
            text = "".join(r.choice(alphabet) for _ in range(r.randint(1, 20)))
        elif roll < 0.80:
            text = "".join(r.choice(string.printable) for _ in range(r.randint(1, 40)))
        else:
            chars = []
            for _ in range(r.randint(1, 30)):
                lo, hi = r.choice(_UNICODE_RANGES)
                chars.append(chr(r.randint(lo, hi)))
            text = "".join(chars)
        return "fuzz" if self.avoid(text) else text

    def integer(self, kind: int) -> int:
        r = self.rng
        lo, hi = INT_RANGES[kind]
        roll = r.random()
        if roll < 0.15:
            value = r.choice([0, 1, -1, 2, 100, 1000, 65535, 65536])
        elif roll < 0.35 and self.known.ints:
            value = r.choice(self.known.ints)
        elif roll < 0.55:
            value = r.choice([lo, hi, lo + 1, hi - 1, hi // 2, lo // 2])
        elif roll < 0.75:
            value = r.randint(-10, 10_000)
        else:
            value = r.randint(lo, hi)
        return min(hi, max(lo, value))

    def floating(self) -> float:
        return self.rng.choice([0.0, -0.0, 1.5, -1e308, 1e308, float("inf"), float("-inf")])

    def enum(self, desc: EnumDescriptor) -> int:
        r = self.rng
        if r.random() < 0.8:
            return r.choice(desc.values).number
        return r.choice([-1, -(2**31), 2**31 - 1, len(desc.values), r.randint(-100, 100)])

    # -- messages ---------------------------------------------------------------

    def message(self, cls: type[Message], depth: int = 0) -> Message:
        msg = cls()
        self.fill(msg, depth)
        return msg

    def fill(self, msg: Message, depth: int = 0) -> None:
        desc: Descriptor = msg.DESCRIPTOR
        if desc.full_name == "google.protobuf.Timestamp":
            self._timestamp(msg)
            return
        chosen_oneofs = {o.name: self.rng.choice([*o.fields, None]) for o in desc.oneofs}
        for f in desc.fields:
            oneof = f.containing_oneof
            if oneof is not None and not oneof.name.startswith("_"):  # a real oneof
                if chosen_oneofs[oneof.name] is not f:
                    continue
            elif self.rng.random() < 0.35:
                continue  # left unset
            self._set_field(msg, f, depth)

    def _timestamp(self, msg: Any) -> None:
        r = self.rng
        if r.random() < 0.5:
            msg.seconds = r.randint(1_600_000_000, 1_900_000_000)
            msg.nanos = r.randint(0, 999_999_999)
        else:
            msg.seconds = self.integer(T.TYPE_INT64)
            msg.nanos = self.integer(T.TYPE_INT32)

    def _count(self) -> int:
        r = self.rng
        roll = r.random()
        if roll < 0.85:
            return r.randint(0, 3)
        if roll < 0.97:
            return r.randint(4, 30)
        return r.randint(100, 400)

    def _set_field(self, msg: Any, f: FieldDescriptor, depth: int) -> None:
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            key_f = f.message_type.fields_by_name["key"]
            value_f = f.message_type.fields_by_name["value"]
            target = getattr(msg, f.name)
            for _ in range(self._count() if depth < self.max_depth else 0):
                key = self._scalar(key_f)
                if value_f.message_type is not None:
                    self.fill(target[key], depth + 1)
                else:
                    target[key] = self._scalar(value_f)
            return
        if f.is_repeated:
            target = getattr(msg, f.name)
            n = self._count()
            if f.message_type is not None:
                if depth >= self.max_depth:
                    return
                for _ in range(min(n, 30)):
                    self.fill(target.add(), depth + 1)
            else:
                target.extend(self._scalar(f) for _ in range(n))
            return
        if f.message_type is not None:
            if depth >= self.max_depth:
                return
            sub = getattr(msg, f.name)
            sub.SetInParent()
            self.fill(sub, depth + 1)
            return
        setattr(msg, f.name, self._scalar(f))

    def _scalar(self, f: FieldDescriptor) -> Any:
        t = f.type
        if t == T.TYPE_STRING:
            return self.string()
        if t == T.TYPE_BYTES:
            return self.string().encode()
        if t == T.TYPE_BOOL:
            return self.rng.random() < 0.5
        if t == T.TYPE_ENUM:
            return self.enum(f.enum_type)
        if t in (T.TYPE_DOUBLE, T.TYPE_FLOAT):
            return self.floating()
        return self.integer(t)
