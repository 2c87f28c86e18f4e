"""HTTP over the mesh (meshadapter.httpfwd): pure (de)serialisation and validation."""

from __future__ import annotations

import asyncio

import msgpack
import pytest

from meshadapter import httpfwd
from meshadapter.httpfwd import ForwardError
from meshadapter.sessions import peek_query


def environ(**extra: str) -> dict[str, object]:
    env: dict[str, object] = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/socket.io/",
        "QUERY_STRING": "EIO=4&transport=polling&sid=abcdef.XYZ",
        "CONTENT_TYPE": "text/plain;charset=UTF-8",
        "CONTENT_LENGTH": "5",
        "HTTP_HOST": "lb.example",
        "HTTP_ORIGIN": "https://app.example",
        "HTTP_CONNECTION": "keep-alive",
        "HTTP_ACCEPT_ENCODING": "gzip",
        "REMOTE_ADDR": "10.1.2.3",
        "wsgi.url_scheme": "https",
        "wsgi.input": object(),
        "asgi.scope": {"type": "http"},
    }
    env.update(extra)
    return env


def roundtrip(obj: object) -> object:
    """What the mesh does to a value: msgpack with binary kept as bytes."""
    return msgpack.unpackb(msgpack.packb(obj, use_bin_type=True), raw=False)


def test_query_param() -> None:
    assert httpfwd.query_param("EIO=4&sid=abc.def&t=1", "sid") == "abc.def"
    assert httpfwd.query_param("EIO=4&transport=polling", "sid") is None
    assert httpfwd.query_param("", "sid") is None
    assert httpfwd.query_param("sid=a%2Fb", "sid") == "a/b"
    assert httpfwd.query_param("xsid=1", "sid") is None


def test_request_roundtrip_keeps_body_headers_and_drops_hop_by_hop() -> None:
    body = b"4\x00\xffbinary"
    req = roundtrip(httpfwd.request_from_environ(environ(), body))
    env = httpfwd.environ_from_request(req, max_body=1000)  # type: ignore[arg-type]
    assert env["REQUEST_METHOD"] == "POST"
    assert env["QUERY_STRING"] == "EIO=4&transport=polling&sid=abcdef.XYZ"
    assert env["meshadapter.body"] == body
    assert env["CONTENT_LENGTH"] == "5" and env["CONTENT_TYPE"].startswith("text/plain")
    assert env["HTTP_ORIGIN"] == "https://app.example"
    assert env["HTTP_ACCEPT_ENCODING"] == "gzip"
    assert "HTTP_CONNECTION" not in env
    assert env["REMOTE_ADDR"] == "10.1.2.3" and env["wsgi.url_scheme"] == "https"
    assert env[httpfwd.FORWARDED_KEY] is True
    assert "wsgi.input" not in env and "asgi.scope" not in env


def test_upgrade_headers_only_when_asked() -> None:
    ws_env = environ(REQUEST_METHOD="GET", HTTP_UPGRADE="websocket", HTTP_CONNECTION="Upgrade",
                     QUERY_STRING="EIO=4&transport=websocket&sid=abcdef.XYZ")
    assert httpfwd.is_websocket_request(ws_env)
    plain = httpfwd.environ_from_request(httpfwd.request_from_environ(ws_env), max_body=10)
    assert "HTTP_UPGRADE" not in plain and not httpfwd.is_websocket_request(plain)
    req = httpfwd.request_from_environ(ws_env, keep_upgrade=True)
    up = httpfwd.environ_from_request(req, max_body=10, keep_upgrade=True)
    assert up["HTTP_UPGRADE"] == "websocket" and httpfwd.is_websocket_request(up)
    # a polling GET with an Upgrade header is not a websocket request
    assert not httpfwd.is_websocket_request(environ(REQUEST_METHOD="GET",
                                                    HTTP_UPGRADE="websocket"))


@pytest.mark.parametrize("bad,reason", [
    ({"m": "DELETE"}, "bad_method"),
    ({"m": "GET", "q": 5}, "bad_request"),
    ({"m": "GET", "b": "text"}, "bad_request"),
    ({"m": "POST", "b": b"x" * 11}, "too_large"),
    ({"m": "GET", "h": [["HTTP_X", 1]]}, "bad_request"),
    ({"m": "GET", "h": [["HTTP_X"]]}, "bad_request"),
    ({"m": "GET", "h": [["HTTP_X", "v"]] * 101}, "too_many_headers"),
    ({"m": "GET", "p": "x" * 5000}, "bad_request"),
    ("not a map", "bad_request"),
])
def test_environ_from_request_rejects(bad: object, reason: str) -> None:
    with pytest.raises(ForwardError) as ei:
        httpfwd.environ_from_request(bad, max_body=10)  # type: ignore[arg-type]
    assert ei.value.reason == reason


def test_environ_from_request_ignores_odd_header_names() -> None:
    env = httpfwd.environ_from_request(
        {"m": "GET", "h": [["HTTP_X_OK", "1"], ["wsgi.input", "x"], ["HTTP_BAD KEY", "v"],
                           ["REMOTE_ADDR", "1.2.3.4"]]}, max_body=10)
    assert env["HTTP_X_OK"] == "1"
    assert "wsgi.input" not in env and "HTTP_BAD KEY" not in env
    assert env["REMOTE_ADDR"] == "127.0.0.1"  # only from the "ra" field


def test_request_from_environ_bounds_headers() -> None:
    env = environ(**{f"HTTP_X_{i}": "v" for i in range(200)})
    with pytest.raises(ForwardError) as ei:
        httpfwd.request_from_environ(env)
    assert ei.value.reason == "too_many_headers"


def test_content_length() -> None:
    assert httpfwd.content_length({}) == 0
    assert httpfwd.content_length({"CONTENT_LENGTH": "12"}) == 12
    for bad in ("x", "-1", "1.5"):
        with pytest.raises(ForwardError):
            httpfwd.content_length({"CONTENT_LENGTH": bad})


def test_response_roundtrip_binary_and_wsgi_iterable() -> None:
    wire = roundtrip(httpfwd.response_to_wire(
        "200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", "3"),
                   (b"X-B", b"v")], [b"\x00\x01", b"\xff"]))
    status, headers, body = httpfwd.response_from_wire(wire)
    assert status == "200 OK" and body == b"\x00\x01\xff"
    assert ("Content-Type", "application/octet-stream") in headers
    assert ("X-B", "v") in headers
    assert all(k.lower() != "content-length" for k, _ in headers)
    assert httpfwd.response_from_wire(httpfwd.response_to_wire("400 BAD REQUEST", [], "x"))[2] \
        == b"x"


@pytest.mark.parametrize("bad", [
    None, {"s": 200}, {"s": "abc"}, {"s": "999 X"}, {"s": "200 OK", "b": "str"},
    {"s": "200 OK", "h": [["X", "a\r\nInjected: 1"]]}, {"s": "200 OK", "h": "x"},
    {"s": "200 OK", "h": [["X"]]},
])
def test_response_from_wire_rejects(bad: object) -> None:
    with pytest.raises(ForwardError):
        httpfwd.response_from_wire(bad)


def test_error_response_looks_like_engineio() -> None:
    status, _, body = httpfwd.error_response(400, "Invalid session")
    assert status.startswith("400 ") and body == b'"Invalid session"'


def test_stream_data() -> None:
    assert httpfwd.stream_data("close", None, 10) is None
    assert httpfwd.stream_data("d", [1, "2probe"], 10) == (1, "2probe")
    assert httpfwd.stream_data("d", [7, b"\x00"], 10) == (7, b"\x00")
    for kind, data in [("x", [1, "a"]), ("d", "a"), ("d", [0, "a"]), ("d", [True, "a"]),
                       ("d", [1, 5]), ("d", [1, "a" * 11]), ("d", [1, "a", 2])]:
        with pytest.raises(ForwardError):
            httpfwd.stream_data(kind, data, 10)


def test_bodies() -> None:
    assert httpfwd.SyncBody(b"abc").read(2) == b"ab"

    async def read() -> tuple[bytes, bytes]:
        b = httpfwd.AsyncBody(b"abcdef")
        return await b.read(4), await b.read()

    assert asyncio.run(read()) == (b"abcd", b"ef")


def test_peek_query() -> None:
    assert peek_query(({"type": "http", "query_string": b"sid=a.b"},)) == "sid=a.b"

    class AioRequest:
        query_string = "sid=x.y"

    class Tornado:
        class request:
            query = "sid=t.u"

    assert peek_query((AioRequest(),)) == "sid=x.y"
    assert peek_query((Tornado(),)) == "sid=t.u"
    assert peek_query(()) is None
    assert peek_query((object(),)) is None


# -- sticky-free owner side: closed sessions (meshadapter.sessions) ------------------
class _FakeSocket:
    def __init__(self) -> None:
        import asyncio

        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.closed = False


def _sticky(sockets: dict[str, object]) -> object:
    from collections import Counter
    from types import SimpleNamespace

    from meshadapter.sessions import AsyncStickyFree

    sf = AsyncStickyFree.__new__(AsyncStickyFree)
    sf.counters = Counter()
    sf.polls = {}
    sf.eio = SimpleNamespace(sockets=sockets)
    return sf


def test_peek_method() -> None:
    from types import SimpleNamespace

    from meshadapter.sessions import peek_method

    assert peek_method(({"type": "http", "method": "GET"},)) == "GET"
    assert peek_method(({"type": "websocket"},)) is None
    assert peek_method((SimpleNamespace(method="POST"),)) == "POST"
    assert peek_method((SimpleNamespace(request=SimpleNamespace(method="GET")),)) == "GET"
    assert peek_method(()) is None


def test_held_poll_is_released_when_the_client_closes_its_session() -> None:
    """python-engineio's AsyncSocket.close(abort=True) does not wake a held
    GET; the owner does, once the request that closed the session is done."""
    import asyncio

    async def scenario() -> None:
        sock = _FakeSocket()
        sf = _sticky({"t.s": sock})
        qs = "EIO=4&transport=polling&sid=t.s"

        async def held_get() -> object:
            return await sock.queue.get()

        async def closing_post() -> None:
            sock.closed = True  # engine.io: CLOSE packet -> close(abort=True)

        get = asyncio.ensure_future(sf._run_owned("t.s", "GET", qs, held_get))
        await asyncio.sleep(0)
        assert sf.polls == {"t.s": 1}
        await sf._run_owned("t.s", "POST", qs, closing_post)
        assert await asyncio.wait_for(get, 1) is None  # engine.io answers [] for None
        assert sf.polls == {} and sf.counters["sf_polls_released"] == 1

    asyncio.run(scenario())


def test_no_release_without_held_poll_and_drain_for_late_get() -> None:
    import asyncio

    async def scenario() -> None:
        sock = _FakeSocket()
        sf = _sticky({"t.s": sock})
        qs = "EIO=4&transport=polling&sid=t.s"

        async def nothing() -> None:
            return None

        sock.closed = True
        await sf._run_owned("t.s", "POST", qs, nothing)
        assert sock.queue.empty() and sf.counters["sf_polls_released"] == 0
        # close(wait=True) queued CLOSE and waits for a GET to collect it;
        # a GET after the close (engine.io answers it 400) releases that wait
        sock.queue.put_nowait("CLOSE")
        joined = asyncio.ensure_future(sock.queue.join())
        await sf._run_owned("t.s", "GET", qs, nothing)
        await asyncio.wait_for(joined, 1)
        assert sf.counters["sf_closed_queue_drained"] == 1

    asyncio.run(scenario())


def test_check_routing_missing() -> None:
    from types import SimpleNamespace

    from meshadapter.check import routing_missing

    membership = SimpleNamespace(
        nodes_for=lambda nsp, rooms: {"b"} if rooms == ["r"] else set(),
        node_for_tag=lambda tag: {"bbbbbb": "b", "cccccc": "c"}.get(tag))
    sio = SimpleNamespace(manager=SimpleNamespace(
        node=SimpleNamespace(tag="aaaaaa", membership=membership)))
    sids = ["aaaaaa.x", "bbbbbb.y", "cccccc.z", "zzzzzz.w", "untagged"]
    assert routing_missing(sio, "/n", "r", sids) == ["cccccc.z", "zzzzzz.w"]
    assert routing_missing(SimpleNamespace(manager=object()), "/n", "r", sids) == []
