"""The HQ nodes a client may use, in the caller's order, and which one it prefers right now.

A cluster runs several HQ nodes on one database and Redis, so any node serves any agent: the
client sticks to one node while it answers and moves to the next in the list when it stops
answering (the socket dropped, a connection failed, a proxy said 502/503). The socket and the
HTTP calls share one :class:`Nodes`, so a login that found the second node answering also sends
the next socket there, and a socket that failed over takes the token refreshes with it.
"""

from __future__ import annotations

from typing import Callable, Iterable

#: Called with (the node left, the node preferred now) whenever the client moves on.
FailoverListener = Callable[[str, str], None]


def parse_urls(urls: str | Iterable[str]) -> tuple[str, ...]:
    """HQ base URLs from one URL, a comma-separated string of them, or an iterable of either.

    Surrounding blanks and trailing slashes go; duplicates collapse (keeping the first place);
    raises ``ValueError`` when nothing is left.
    """
    items = [urls] if isinstance(urls, str) else list(urls)
    parsed: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"an HQ URL must be a string, not {type(item).__name__}")
        for part in item.split(","):
            url = part.strip().rstrip("/")
            if url and url not in parsed:
                parsed.append(url)
    if not parsed:
        raise ValueError("no HQ URL given")
    return tuple(parsed)


class Nodes:
    """An ordered list of HQ node URLs and the one currently preferred (the first at the start)."""

    def __init__(self, urls: str | Iterable[str], on_failover: FailoverListener | None = None) -> None:
        """``urls``: see :func:`parse_urls`; ``on_failover`` hears of every move to another node."""
        self.urls = parse_urls(urls)
        self._current = 0
        self._on_failover = on_failover

    def __len__(self) -> int:
        return len(self.urls)

    @property
    def current(self) -> str:
        """The node to try first."""
        return self.urls[self._current]

    def in_turn(self) -> list[str]:
        """Every node once, starting with the preferred one: one round of attempts."""
        return [*self.urls[self._current:], *self.urls[:self._current]]

    def failed(self, url: str) -> None:
        """``url`` stopped answering: prefer the next node, unless another caller already moved on.

        Comparing with ``url`` (not just advancing) matters because the socket and HTTP calls can
        notice the same dead node one after the other: the second must not skip a healthy node.
        """
        if len(self.urls) > 1 and url == self.current:
            self._current = (self._current + 1) % len(self.urls)
            if self._on_failover is not None:
                self._on_failover(url, self.current)

    def answered(self, url: str) -> None:
        """``url`` answered: prefer it from now on."""
        if url in self.urls:
            self._current = self.urls.index(url)
