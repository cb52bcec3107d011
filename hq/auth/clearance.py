"""Clearance levels and channel policy: may this role read or write that channel?"""

from __future__ import annotations

from typing import Mapping

from ..config import ChannelPolicy


class ClearancePolicy:
    """Ordered clearance levels (lowest first) and each channel's read and write minimum."""

    def __init__(self, levels: tuple[str, ...], channels: Mapping[str, ChannelPolicy]) -> None:
        self._rank = {name: index for index, name in enumerate(levels)}
        self._channels = dict(channels)
        self.levels = levels

    def is_role(self, role: str) -> bool:
        """Whether ``role`` is a configured clearance level."""
        return role in self._rank

    def exists(self, channel: str) -> bool:
        """Whether ``channel`` is configured."""
        return channel in self._channels

    def may_read(self, role: str, channel: str) -> bool:
        """Whether an agent of ``role`` may join and read ``channel``."""
        policy = self._channels.get(channel)
        return policy is not None and self._at_least(role, policy.read)

    def may_write(self, role: str, channel: str) -> bool:
        """Whether an agent of ``role`` may send to ``channel``."""
        policy = self._channels.get(channel)
        return policy is not None and self._at_least(role, policy.write)

    def readable(self, role: str) -> list[str]:
        """The channels ``role`` may read, in configuration order."""
        return [name for name in self._channels if self.may_read(role, name)]

    def writable(self, role: str) -> list[str]:
        """The channels ``role`` may write, in configuration order."""
        return [name for name in self._channels if self.may_write(role, name)]

    def _at_least(self, role: str, minimum: str) -> bool:
        rank = self._rank.get(role)
        return rank is not None and rank >= self._rank[minimum]
