"""Pure parts of the cluster API (meshadapter/cluster.py): selectors, ack
aggregation, handshake filtering, msgpack sanitising, remote-socket objects."""

from __future__ import annotations

import datetime
from typing import Any

import msgpack
import pytest

from meshadapter import MeshTimeoutError
from meshadapter.cluster import (
    AckCollector,
    AsyncRemoteSocket,
    BroadcastAckTimeout,
    NodeResponses,
    RemoteSocket,
    ack_value,
    handshake_from_environ,
    msgpackable,
    room_list,
    select_sids,
    selector_owners,
)

# python-socketio's manager.rooms[namespace]: room -> {sid: eio_sid}
NS: dict[Any, dict[str, str]] = {
    None: {"a": "ea", "b": "eb", "c": "ec", "d": "ed"},
    "a": {"a": "ea"}, "b": {"b": "eb"}, "c": {"c": "ec"}, "d": {"d": "ed"},
    "red": {"a": "ea", "b": "eb"},
    "blue": {"b": "eb", "c": "ec"},
    7: {"d": "ed"},
    "ghost": {"zombie": "ez"},  # not in the None room (e.g. disconnecting)
}


def sids(pairs: list[tuple[str, str]]) -> list[str]:
    return [s for s, _ in pairs]


def test_room_list() -> None:
    assert room_list(None) is None
    assert room_list("r") == ["r"]
    assert room_list(3) == [3]
    assert room_list(("a", "b")) == ["a", "b"]
    assert sorted(room_list({"a", "b"}) or []) == ["a", "b"]


def test_select_everyone_and_rooms() -> None:
    assert sids(select_sids(NS, None)) == ["a", "b", "c", "d"]
    assert sids(select_sids(NS, [])) == ["a", "b", "c", "d"]
    assert sids(select_sids(NS, ["red"])) == ["a", "b"]
    # any of the rooms, each socket once
    assert sids(select_sids(NS, ["red", "blue"])) == ["a", "b", "c"]
    assert sids(select_sids(NS, [7])) == ["d"]
    assert select_sids(NS, ["nope"]) == []
    assert select_sids({}, None) == []
    assert select_sids(NS, ["red"])[0] == ("a", "ea")


def test_select_except_rooms_and_sids() -> None:
    assert sids(select_sids(NS, None, ["red"])) == ["c", "d"]
    assert sids(select_sids(NS, ["red", "blue"], ["b"])) == ["a", "c"]  # a sid is a room
    assert sids(select_sids(NS, ["blue"], ["red", "blue"])) == []
    assert sids(select_sids(NS, ["c"])) == ["c"]
    assert sids(select_sids(NS, None, ["nope"])) == ["a", "b", "c", "d"]


def test_select_ignores_sockets_not_connected() -> None:
    assert select_sids(NS, ["ghost"]) == []


def test_selector_owners() -> None:
    owners = {"aaaaaa.x1": "n1", "bbbbbb.x2": "LOCAL", "cccccc.x3": None}
    own = owners.get
    assert selector_owners(None, own) is None
    assert selector_owners([], own) is None
    assert selector_owners(["room"], own) is None  # named room: ask everyone
    assert selector_owners(["aaaaaa.x1", "room"], own) is None
    assert selector_owners(["aaaaaa.x1"], own) == {"n1"}
    assert selector_owners(["aaaaaa.x1", "bbbbbb.x2"], own) == {"n1", "LOCAL"}
    assert selector_owners(["cccccc.x3"], own) == set()  # owner gone: nobody to ask


def test_ack_value() -> None:
    assert ack_value([]) is None
    assert ack_value([1]) == 1
    assert ack_value([[1]]) == [1]
    assert ack_value([1, "x"]) == [1, "x"]
    assert ack_value(()) is None


def test_msgpackable() -> None:
    class Thing:
        def __repr__(self) -> str:
            return "<thing>"

    dt = datetime.datetime(2026, 1, 2, tzinfo=datetime.timezone.utc)
    src = {"a": (1, 2), "s": {3}, 4: b"x", (1, 2): "k", "o": Thing(), "d": dt,
           "n": None, "f": 1.5, "t": True, "ba": bytearray(b"yz"), "big": 2**70}
    out = msgpackable(src)
    assert out["a"] == [1, 2] and out["s"] == [3] and out[4] == b"x"
    assert out["(1, 2)"] == "k" and out["o"] == "<thing>" and out["d"] == repr(dt)
    assert out["n"] is None and out["f"] == 1.5 and out["t"] is True
    assert out["ba"] == b"yz" and out["big"] == str(2**70)
    msgpack.packb(out, use_bin_type=True)  # really packable
    deep: Any = []
    cur = deep
    for _ in range(100):
        cur.append([])
        cur = cur[0]
    msgpack.packb(msgpackable(deep), use_bin_type=True)


def test_handshake_from_environ_is_filtered_and_packable() -> None:
    environ = {
        "REQUEST_METHOD": "GET", "PATH_INFO": "/socket.io/", "QUERY_STRING": "EIO=4&t=1&tag=a&tag=b&e=",
        "REMOTE_ADDR": "127.0.0.1", "HTTP_USER_AGENT": "ua", "HTTP_X_FORWARDED_FOR": "10.0.0.1",
        "CONTENT_TYPE": "text/plain", "wsgi.url_scheme": "https",
        "asgi.receive": object(), "wsgi.input": object(), "HTTP_BAD": b"bytes-not-str",
    }
    hs = handshake_from_environ(environ, issued=1_700_000_000.5)
    assert hs["headers"] == {"user-agent": "ua", "x-forwarded-for": "10.0.0.1",
                             "content-type": "text/plain"}
    assert hs["query"] == {"EIO": "4", "t": "1", "tag": ["a", "b"], "e": ""}
    assert hs["address"] == "127.0.0.1" and hs["secure"] is True
    assert hs["url"] == "/socket.io/?EIO=4&t=1&tag=a&tag=b&e="
    assert hs["issued"] == 1_700_000_000_500
    assert hs["time"].startswith("2023-11-14T22:13:20")
    msgpack.packb(hs, use_bin_type=True)
    empty = handshake_from_environ({})
    assert empty == {"headers": {}, "query": {}, "address": "", "secure": False, "url": "",
                     "issued": 0, "time": ""}


def test_ack_collector_completes_when_every_client_answered() -> None:
    col = AckCollector({"me", "n2", "n3"})
    col.set_count("me", 1)
    assert not col.complete and col.missing == {"me", "n2", "n3"}
    assert col.add("n2", "early")  # an ack may arrive before its node's count
    col.set_count("n2", 2)
    col.set_count("n3", 0)
    assert col.missing == {"me", "n2"} and col.expected == 3
    assert col.add("me", 1)
    assert col.add("n2", 2)
    assert col.complete and col.responses == ["early", 1, 2]
    # more acks than clients, or from a stranger: not counted
    assert not col.add("n2", "extra") and not col.add("zz", 0)
    assert col.responses == ["early", 1, 2]


def test_ack_collector_dead_node_is_not_waited_for() -> None:
    col = AckCollector({"me", "n2", "n3"})
    col.set_count("me", 0)
    col.set_count("n2", 1)
    col.add("n2", "x")
    col.set_count("n3", 5)
    col.add("n3", "y")
    assert col.missing == {"n3"}
    col.node_failed("n3")
    assert col.complete and col.responses == ["x", "y"]
    assert not col.add("n3", "late")
    # a node that never reported its count and died
    col2 = AckCollector({"me", "n2"})
    col2.set_count("me", 0)
    assert col2.missing == {"n2"}
    col2.node_failed("n2")
    assert col2.complete and col2.responses == []
    col2.set_count("stranger", 3)
    assert col2.expected == 0


def test_broadcast_ack_timeout_is_a_mesh_timeout_with_a_list() -> None:
    e = BroadcastAckTimeout("t", {"n3", "n1"}, [1, 2], 4)
    assert isinstance(e, MeshTimeoutError) and isinstance(e, TimeoutError)
    assert e.responses == [1, 2] and e.expected == 4 and e.missing == ["n1", "n3"]


def test_node_responses() -> None:
    r = NodeResponses({"n1": 1}, failed=["n3"], errors={"n2": "boom"})
    assert r == {"n1": 1} and r.failed == {"n3"} and r.errors == {"n2": "boom"}
    assert NodeResponses() == {} and NodeResponses().failed == set()


class FakeAsyncManager:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def emit(self, *a: Any, **k: Any) -> None:
        self.calls.append(("emit", a, k))

    async def sockets_join(self, *a: Any, **k: Any) -> int:
        self.calls.append(("join", a, k))
        return 1

    async def sockets_leave(self, *a: Any, **k: Any) -> int:
        self.calls.append(("leave", a, k))
        return 1

    async def disconnect_sockets(self, *a: Any, **k: Any) -> int:
        self.calls.append(("disconnect", a, k))
        return 1


INFO = {"sid": "abcdef.1", "nsp": "/chat", "rooms": ["abcdef.1", "r"], "data": {"u": 1},
        "handshake": {"address": "127.0.0.1"}, "node": "n2"}


async def test_async_remote_socket_methods_select_its_sid() -> None:
    mgr = FakeAsyncManager()
    s = AsyncRemoteSocket(mgr, INFO)
    assert (s.sid, s.id, s.namespace, s.node_id) == ("abcdef.1", "abcdef.1", "/chat", "n2")
    assert s.rooms == {"abcdef.1", "r"} and s.data == {"u": 1}
    await s.emit("ev", 1)
    await s.join(["x", "y"])
    await s.leave("r")
    await s.disconnect(close=True)
    assert mgr.calls == [
        ("emit", ("ev", 1), {"namespace": "/chat", "to": "abcdef.1", "callback": None}),
        ("join", (["x", "y"],), {"room": "abcdef.1", "namespace": "/chat"}),
        ("leave", ("r",), {"room": "abcdef.1", "namespace": "/chat"}),
        ("disconnect", (), {"room": "abcdef.1", "namespace": "/chat", "close": True}),
    ]
    assert s.rooms == {"abcdef.1", "x", "y"}
    assert s.to_dict()["node_id"] == "n2" and "n2" in repr(s)


def test_sync_remote_socket_methods_select_its_sid() -> None:
    calls: list[Any] = []

    class M:
        def sockets_join(self, *a: Any, **k: Any) -> None:
            calls.append(("join", a, k))

        def disconnect_sockets(self, *a: Any, **k: Any) -> None:
            calls.append(("disconnect", a, k))

    s = RemoteSocket(M(), INFO)
    s.join("z")
    s.disconnect()
    assert calls == [("join", ("z",), {"room": "abcdef.1", "namespace": "/chat"}),
                     ("disconnect", (), {"room": "abcdef.1", "namespace": "/chat", "close": False})]


def test_on_server_event_registration() -> None:
    import meshadapter

    mgr = meshadapter.AsyncMeshManager(discovery="none", port=0)

    @mgr.on_server_event("a")
    def a() -> int:
        return 1

    def b() -> int:
        return 2

    assert mgr.on_server_event("b", b, namespace="/x") is b
    assert mgr._cl_handlers[("/", "a")] is a and mgr._cl_handlers[("/x", "b")] is b
    assert mgr.host_id == mgr.node_id


def test_server_side_emit_rejects_unpackable_data() -> None:
    from meshadapter.cluster import _check_packable

    assert _check_packable([1, "a", b"b", {"k": [None]}]) == [1, "a", b"b", {"k": [None]}]
    with pytest.raises(TypeError):
        _check_packable([object()])
