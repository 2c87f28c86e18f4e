"""Wire format of the mesh: versioned msgpack envelopes, strictly validated.

A mesh frame is a two-part ZeroMQ message ``[topic, payload]``.  The topic
selects the receivers (ZeroMQ filters on the publisher side): :data:`TOPIC_ALL`
reaches every peer, :func:`node_topic` exactly one.  The payload is one
msgpack map::

    {"v": 1, "t": <MsgType>, "src": <node id>, "inc": <incarnation>,
     "seq": <per-sender, per-topic sequence number>, ...type fields}

Decoding never trusts a peer: the version, the type, and every field's type,
length and count are checked, and anything else raises :class:`DecodeError`
with a short reason the caller counts and logs.  This module does no I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Callable, Mapping, cast

import msgpack

PROTOCOL_VERSION = 1
TOPIC_ALL = b"*"
MAX_ID_LEN = 64
MAX_ROOM_LEN = 1024
MAX_NAMESPACE_LEN = 256
MAX_LIST = 100_000


def node_topic(node_id: str) -> bytes:
    """The topic addressing one node.

    The trailing NUL stops ZeroMQ prefix matching from delivering node
    ``n1``'s frames to node ``n10``.
    """
    return b"@" + node_id.encode() + b"\x00"


class MsgType(enum.IntEnum):
    HEARTBEAT = 1
    BYE = 2
    SYNC_REQ = 3
    ROOMS = 4
    BROADCAST = 10
    ACK = 11
    ROOM_OP = 12
    REQUEST = 20
    RESPONSE = 21
    STREAM = 30
    RECOVERY = 40


class DecodeError(ValueError):
    """A frame that is not a valid mesh message; ``reason`` is a short label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class Message:
    """A decoded, validated mesh message."""

    type: MsgType
    src: str
    inc: str
    seq: int
    body: Mapping[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.body[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.body.get(key, default)


# --- field validators --------------------------------------------------------
Check = Callable[[Any], bool]


def _str(max_len: int) -> Check:
    return lambda v: isinstance(v, str) and len(v) <= max_len


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and -(2**63) <= v < 2**64


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _bool(v: Any) -> bool:
    return isinstance(v, bool)


def _any(v: Any) -> bool:
    return True


def _room(v: Any) -> bool:
    return v is None or (isinstance(v, str) and len(v) <= MAX_ROOM_LEN) or _int(v)


def _list(item: Check, max_len: int = MAX_LIST) -> Check:
    return lambda v: isinstance(v, list) and len(v) <= max_len and all(item(i) for i in v)


def _opt(check: Check) -> Check:
    return lambda v: v is None or check(v)


def _map(key: Check, value: Check, max_len: int = 10_000) -> Check:
    return lambda v: (
        isinstance(v, dict) and len(v) <= max_len and all(key(k) and value(x) for k, x in v.items())
    )


def _one_of(*values: Any) -> Check:
    return lambda v: v in values


_nsp = _str(MAX_NAMESPACE_LEN)
_id = _str(MAX_ID_LEN)
_part = lambda v: isinstance(v, (str, bytes))  # noqa: E731
_room_map = _map(_nsp, _list(_room))

#: For each type: field -> (check, required).
SCHEMAS: dict[MsgType, dict[str, tuple[Check, bool]]] = {
    MsgType.HEARTBEAT: {
        "ep": (_str(512), True),
        "rv": (_int, True),
        "tag": (_str(16), True),
        "clients": (_int, False),
        "up": (_num, False),
        "meta": (_map(_str(64), _any, 64), False),
    },
    MsgType.BYE: {},
    MsgType.SYNC_REQ: {},
    MsgType.ROOMS: {
        "rv": (_int, True),
        "full": (_bool, True),
        "add": (_room_map, True),
        "rm": (_room_map, True),
    },
    MsgType.BROADCAST: {
        "nsp": (_nsp, True),
        "rooms": (_opt(_list(_room)), True),
        "skip": (_list(_str(MAX_ROOM_LEN)), True),
        "pkt": (_list(_part, 1024), True),
        "ack": (_opt(_int), False),
        "off": (_str(64), False),
    },
    MsgType.ACK: {
        "req": (_int, True),
        "sid": (_opt(_str(MAX_ROOM_LEN)), False),
        "args": (_list(_any, 10_000), True),
    },
    MsgType.ROOM_OP: {
        "op": (_one_of("join", "leave", "disconnect", "close"), True),
        "nsp": (_nsp, True),
        "sid": (_opt(_str(MAX_ROOM_LEN)), True),
        "room": (_room, True),
    },
    MsgType.REQUEST: {
        "id": (_int, True),
        "op": (_str(64), True),
        "args": (_map(_str(64), _any, 256), True),
    },
    MsgType.RESPONSE: {
        "id": (_int, True),
        "ok": (_bool, True),
        "data": (_any, False),
        "err": (_str(4096), False),
    },
    MsgType.STREAM: {
        "sid": (_str(128), True),
        "kind": (_str(16), True),
        "data": (_any, False),
    },
    MsgType.RECOVERY: {
        "op": (_one_of("state", "drop", "pkt"), True),
        "pid": (_str(64), True),
        "st": (_map(_str(16), _any, 16), False),
        "off": (_str(64), False),
        "pkt": (_list(_part, 1024), False),
    },
}

_ENVELOPE = frozenset(("v", "t", "src", "inc", "seq"))
_TYPES = {int(t): t for t in MsgType}
#: Per type: (required fields, all known fields, [(field, check, required)]).
_COMPILED = {
    t: (
        frozenset(k for k, (_, req) in schema.items() if req),
        frozenset(schema) | _ENVELOPE,
        [(k, check, req) for k, (check, req) in schema.items()],
    )
    for t, schema in SCHEMAS.items()
}


def encode(mtype: MsgType, src: str, inc: str, seq: int, body: Mapping[str, Any]) -> bytes:
    """Encode one message. ``body`` must hold only msgpack-able values."""
    frame = {"v": PROTOCOL_VERSION, "t": int(mtype), "src": src, "inc": inc, "seq": seq}
    frame.update(body)
    return cast(bytes, msgpack.packb(frame, use_bin_type=True))


def decode(payload: bytes, max_bytes: int) -> Message:
    """Decode and validate one payload, or raise :class:`DecodeError`."""
    if len(payload) > max_bytes:
        raise DecodeError("oversized", f"{len(payload)} > {max_bytes} bytes")
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=False, use_list=True)
    except Exception as exc:  # msgpack raises a zoo of exception types
        raise DecodeError("malformed", type(exc).__name__) from None
    if not isinstance(obj, dict):
        raise DecodeError("malformed", "not a map")
    v = obj.get("v")
    if v != PROTOCOL_VERSION:
        raise DecodeError("version", f"unsupported protocol version {v!r}")
    t = obj.get("t")
    mtype = _TYPES.get(t) if type(t) is int else None
    if mtype is None:
        raise DecodeError("unknown_type", repr(t)[:32])
    src, inc, seq = obj.get("src"), obj.get("inc"), obj.get("seq")
    if not (_id(src) and src and _id(inc) and _int(seq) and cast(int, seq) >= 0):
        raise DecodeError("bad_envelope", "src/inc/seq")
    required, known, checks = _COMPILED[mtype]
    if not known.issuperset(obj):
        extra = next(k for k in obj if k not in known)
        raise DecodeError("bad_field", f"{mtype.name}.{extra!r} unexpected"[:80])
    for key, check, req in checks:
        if key not in obj:
            if req:
                raise DecodeError("bad_field", f"{mtype.name}.{key} missing")
            continue
        if not check(obj[key]):
            raise DecodeError("bad_field", f"{mtype.name}.{key} invalid")
    for key in _ENVELOPE:
        del obj[key]
    # Validated above: src and inc are str, seq an int.
    return Message(mtype, cast(str, src), cast(str, inc), cast(int, seq), obj)
