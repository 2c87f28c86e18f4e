"""Request tracking for cluster requests, free of I/O.

A request goes to a set of nodes and completes when every one of them has
answered, has died, or the deadline passes — whichever comes first.  As in
Node's ``ClusterAdapter`` the tracker keeps the exact set of nodes still
missing, so a timeout can say who did not answer, and a node that dies ends
its part of every request at once instead of at the deadline.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Iterable


@dataclass
class Pending:
    id: int
    targets: frozenset[str]
    deadline: float
    missing: set[str]
    responses: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)  # died before answering
    expired: bool = False

    @property
    def done(self) -> bool:
        return not self.missing or self.expired


class RequestTracker:
    """Open requests by id; the I/O layer maps ids to futures."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self.open: dict[int, Pending] = {}

    def start(self, targets: Iterable[str], deadline: float) -> Pending:
        t = frozenset(targets)
        p = Pending(next(self._ids), t, deadline, set(t))
        if p.missing:
            self.open[p.id] = p
        return p

    def respond(self, req_id: int, node: str, ok: bool, data: Any) -> Pending | None:
        """Record an answer; returns the request when this completed it."""
        p = self.open.get(req_id)
        if p is None or node not in p.missing:
            return None  # late, duplicate or unsolicited
        p.missing.discard(node)
        if ok:
            p.responses[node] = data
        else:
            p.errors[node] = str(data)
        return self._maybe_close(p)

    def node_failed(self, node: str) -> list[Pending]:
        """A node died: it answers nothing more. Returns requests it completed."""
        done = []
        for p in list(self.open.values()):
            if node in p.missing:
                p.missing.discard(node)
                p.failed.add(node)
                if self._maybe_close(p) is not None:
                    done.append(p)
        return done

    def expire(self, now: float) -> list[Pending]:
        done = []
        for p in list(self.open.values()):
            if now >= p.deadline:
                p.expired = True
                del self.open[p.id]
                done.append(p)
        return done

    def next_deadline(self) -> float | None:
        return min((p.deadline for p in self.open.values()), default=None)

    def _maybe_close(self, p: Pending) -> Pending | None:
        if p.missing:
            return None
        self.open.pop(p.id, None)
        return p
