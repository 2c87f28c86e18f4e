"""HTTP over the mesh, free of I/O: what sticky-free forwarding puts on the wire.

A polling request that reaches a node which does not own its Engine.IO
session travels to the owner as the ``args`` of a mesh ``REQUEST`` (op
``"http"``); the owner's answer is the ``data`` of the ``RESPONSE``.  This
module turns a WSGI-style ``environ`` (what every python-engineio driver
produces with its ``translate_request``) into that map and back, and
validates everything a peer sends: a forwarded request is rebuilt only from
checked fields, never trusted as an environ.

Wire shapes (msgpack maps, binary bodies stay bytes)::

    request  {"m": "GET"|"POST"|"OPTIONS", "p": path, "q": query string,
              "h": [[HTTP_NAME, value], ...], "b": body bytes,
              "ra": remote address, "sch": url scheme}
    response {"s": "200 OK", "h": [[name, value], ...], "b": body bytes}

Websocket tunnel frames (``MsgType.STREAM``, ``{sid: tunnel id, kind, data}``)
are checked by :func:`stream_data`.
"""

from __future__ import annotations

import io
import urllib.parse
from collections.abc import Mapping
from typing import Any

METHODS = ("GET", "POST", "OPTIONS")
MAX_HEADERS = 100
MAX_HEADER_BYTES = 64 * 1024
MAX_PATH = 4096
MAX_QUERY = 8192
#: Headers never forwarded for a polling request: hop-by-hop ones, and the
#: upgrade pair (a polling request must never turn into an upgrade at the owner).
HOP_BY_HOP = frozenset({
    "HTTP_CONNECTION", "HTTP_KEEP_ALIVE", "HTTP_PROXY_AUTHORIZATION", "HTTP_TE",
    "HTTP_TRAILER", "HTTP_TRANSFER_ENCODING", "HTTP_UPGRADE", "HTTP_PROXY_CONNECTION",
})
#: Headers of the owner's answer that the receiving node's server sets itself.
RESPONSE_DROP = frozenset({"content-length", "connection", "transfer-encoding", "keep-alive"})
#: Marker key in a synthetic environ built by :func:`environ_from_request`.
FORWARDED_KEY = "meshadapter.forwarded"


class ForwardError(ValueError):
    """A forwarded request/response/frame that does not validate; ``reason``
    is a short label for counters."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


# -- reading the query ---------------------------------------------------------
def query_param(query_string: str, name: str) -> str | None:
    """First value of ``name`` in a query string (None if absent).

    Cheap on the hot path: no full parse unless the name is present.
    """
    if not query_string or (name + "=") not in query_string:
        return None
    values = urllib.parse.parse_qs(query_string).get(name)
    return values[0] if values else None


def is_websocket_request(environ: Mapping[str, Any]) -> bool:
    """A websocket upgrade (``transport=websocket`` and ``Upgrade: websocket``)."""
    if environ.get("REQUEST_METHOD") != "GET":
        return False
    if environ.get("HTTP_UPGRADE", "").lower() != "websocket":
        return False
    return query_param(str(environ.get("QUERY_STRING", "")), "transport") == "websocket"


# -- requests --------------------------------------------------------------------
def request_from_environ(environ: Mapping[str, Any], body: bytes = b"",
                         *, keep_upgrade: bool = False) -> dict[str, Any]:
    """The wire form of a request; ``body`` already read from ``wsgi.input``."""
    headers: list[list[str]] = []
    size = 0
    for key, value in environ.items():
        if not isinstance(key, str) or not isinstance(value, str):
            continue
        if key.startswith("HTTP_"):
            if key in HOP_BY_HOP and not (
                keep_upgrade and key in ("HTTP_UPGRADE", "HTTP_CONNECTION")
            ):
                continue
        elif key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            continue
        size += len(key) + len(value)
        if len(headers) >= MAX_HEADERS or size > MAX_HEADER_BYTES:
            raise ForwardError("too_many_headers", f"{len(headers)} headers, {size} bytes")
        headers.append([key, value])
    return {
        "m": str(environ.get("REQUEST_METHOD", "GET")),
        "p": str(environ.get("PATH_INFO", "/"))[:MAX_PATH],
        "q": str(environ.get("QUERY_STRING", "")),
        "h": headers,
        "b": bytes(body),
        "ra": str(environ.get("REMOTE_ADDR", "")),
        "sch": str(environ.get("wsgi.url_scheme", "http")),
    }


def _check_str(value: Any, limit: int, what: str) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise ForwardError("bad_request", f"{what} is not a string of <= {limit} chars")
    return value


def environ_from_request(req: Mapping[str, Any], *, max_body: int,
                         keep_upgrade: bool = False) -> dict[str, Any]:
    """Validate a wire request and build the environ the owner's engine.io sees.

    ``wsgi.input`` is *not* set (async and sync servers read it differently):
    the body is in ``environ["meshadapter.body"]``.  The original
    ``Content-Length`` is kept even when the sender dropped an oversized body,
    so engine.io rejects it exactly as it would have locally.
    """
    if not isinstance(req, Mapping):
        raise ForwardError("bad_request", "not a map")
    method = req.get("m")
    if method not in METHODS:
        raise ForwardError("bad_method", repr(method)[:32])
    path = _check_str(req.get("p", "/"), MAX_PATH, "path")
    query = _check_str(req.get("q", ""), MAX_QUERY, "query")
    body = req.get("b", b"")
    if not isinstance(body, bytes):
        raise ForwardError("bad_request", "body is not bytes")
    if len(body) > max_body:
        raise ForwardError("too_large", f"{len(body)} > {max_body} bytes")
    headers = req.get("h", [])
    if not isinstance(headers, list) or len(headers) > MAX_HEADERS:
        raise ForwardError("too_many_headers", "headers")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "RAW_URI": path + ("?" + query if query else ""),
        "SCRIPT_NAME": "",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_NAME": "meshadapter",
        "SERVER_PORT": "0",
        "REMOTE_ADDR": _check_str(req.get("ra", ""), 256, "remote address") or "127.0.0.1",
        "REMOTE_PORT": "0",
        "wsgi.url_scheme": "https" if req.get("sch") == "https" else "http",
        "wsgi.version": (1, 0),
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "meshadapter.body": body,
        FORWARDED_KEY: True,
    }
    size = 0
    for item in headers:
        if not (isinstance(item, list) and len(item) == 2):
            raise ForwardError("bad_request", "header is not a pair")
        key = _check_str(item[0], 256, "header name")
        value = _check_str(item[1], MAX_HEADER_BYTES, "header value")
        size += len(key) + len(value)
        if size > MAX_HEADER_BYTES:
            raise ForwardError("too_many_headers", f"{size} bytes")
        if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            environ[key] = value
        elif key.startswith("HTTP_") and key.replace("_", "").isalnum():
            if key in HOP_BY_HOP and not (
                keep_upgrade and key in ("HTTP_UPGRADE", "HTTP_CONNECTION")
            ):
                continue
            environ[key] = value
    return environ


def content_length(environ: Mapping[str, Any]) -> int:
    """The request's ``Content-Length`` (0 if absent); ForwardError if invalid."""
    raw = environ.get("CONTENT_LENGTH") or "0"
    try:
        n = int(raw)
    except (TypeError, ValueError):
        raise ForwardError("bad_length", repr(raw)[:32]) from None
    if n < 0:
        raise ForwardError("bad_length", str(n))
    return n


# -- responses -------------------------------------------------------------------
def _text(v: Any) -> str:
    return v.decode("latin-1") if isinstance(v, (bytes, bytearray)) else str(v)


def response_to_wire(status: str, headers: Any, body: Any) -> dict[str, Any]:
    """The wire form of engine.io's answer (``status`` like ``"200 OK"``)."""
    if isinstance(body, str):
        body = body.encode("utf-8")
    elif isinstance(body, (list, tuple)):  # WSGI iterable
        body = b"".join(b if isinstance(b, bytes) else str(b).encode() for b in body)
    elif body is None:
        body = b""
    hdrs = [[_text(k), _text(v)] for k, v in headers or []
            if _text(k).lower() not in RESPONSE_DROP]
    return {"s": str(status), "h": hdrs, "b": bytes(body)}


def response_from_wire(data: Any) -> tuple[str, list[tuple[str, str]], bytes]:
    """Validate an owner's answer: ``(status, headers, body)``."""
    if not isinstance(data, Mapping):
        raise ForwardError("bad_response", "not a map")
    status = data.get("s")
    if not isinstance(status, str) or len(status) > 128 or not status[:3].isdigit():
        raise ForwardError("bad_response", f"status {status!r}"[:64])
    code = int(status[:3])
    if not 100 <= code <= 599:
        raise ForwardError("bad_response", f"status {code}")
    body = data.get("b", b"")
    if not isinstance(body, bytes):
        raise ForwardError("bad_response", "body is not bytes")
    raw = data.get("h", [])
    if not isinstance(raw, list) or len(raw) > MAX_HEADERS:
        raise ForwardError("bad_response", "headers")
    headers: list[tuple[str, str]] = []
    for item in raw:
        if not (isinstance(item, list) and len(item) == 2
                and isinstance(item[0], str) and isinstance(item[1], str)
                and len(item[0]) <= 256 and len(item[1]) <= MAX_HEADER_BYTES
                and "\n" not in item[0] + item[1] and "\r" not in item[0] + item[1]):
            raise ForwardError("bad_response", "header")
        headers.append((item[0], item[1]))
    return status, headers, body


def error_response(code: int, message: str) -> tuple[str, list[tuple[str, str]], bytes]:
    """An answer in engine.io's own style (its 400 body is a JSON string)."""
    import json

    reason = {400: "BAD REQUEST", 413: "PAYLOAD TOO LARGE", 500: "INTERNAL SERVER ERROR",
              503: "SERVICE UNAVAILABLE", 504: "GATEWAY TIMEOUT"}.get(code, "ERROR")
    return f"{code} {reason}", [("Content-Type", "text/plain")], json.dumps(message).encode()


# -- websocket tunnel frames --------------------------------------------------------
STREAM_KINDS = ("d", "close")


def stream_data(kind: str, data: Any, max_bytes: int) -> tuple[int, str | bytes] | None:
    """Validate the ``data`` of a STREAM frame: ``(n, payload)`` for ``"d"``
    (``n`` = per-tunnel, per-direction frame number), None for ``"close"``."""
    if kind == "close":
        return None
    if kind != "d":
        raise ForwardError("bad_stream", f"kind {kind!r}"[:40])
    if not (isinstance(data, list) and len(data) == 2):
        raise ForwardError("bad_stream", "data is not [n, payload]")
    n, payload = data
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ForwardError("bad_stream", "frame number")
    if not isinstance(payload, (str, bytes)):
        raise ForwardError("bad_stream", "payload type")
    if len(payload) > max_bytes:
        raise ForwardError("too_large", f"{len(payload)} > {max_bytes}")
    return n, payload


class SyncBody(io.BytesIO):
    """``wsgi.input`` for the threading server."""


class AsyncBody:
    """``wsgi.input`` for asyncio servers: ``await read(n)``."""

    def __init__(self, data: bytes) -> None:
        self._buf = io.BytesIO(data)

    async def read(self, length: int | None = None) -> bytes:
        return self._buf.read(-1 if length is None else length)
