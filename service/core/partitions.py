"""Partitions: how the work streams and the reconcile due-set are split across Redis.

A user (for call events, a STARFACE login) always maps to the same partition, so everything queued
for it sits in one stream, in order, and its due entry in one sorted set.  Each partition carries a
hash tag of its own, so on Redis Cluster the partitions spread over the nodes while every Lua script
still touches the keys of one slot only.  A single Redis uses the same code with one or more
partitions.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from service.core import keys

if TYPE_CHECKING:
    import redis.asyncio as aioredis

# More would only add idle blocking reads per worker; a cluster of 64 masters still gets 4 each.
MAX_PARTITIONS = 256


class PartitionCountError(ValueError):
    def __init__(self, count: int) -> None:
        self.count = count
        super().__init__(f"must be between 1 and {MAX_PARTITIONS}, got {count}")


@dataclass(frozen=True)
class Partitions:
    count: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_PARTITIONS:
            raise PartitionCountError(self.count)

    def of(self, key: str) -> int:
        """The partition of a user id or login: stable across processes and restarts."""
        return zlib.crc32(key.encode("utf-8")) % self.count

    def indexes(self) -> range:
        return range(self.count)

    def presence_stream(self, user_id: str) -> str:
        return keys.presence_stream(self.of(user_id))

    def call_stream(self, login: str) -> str:
        return keys.call_stream(self.of(login))

    def presence_streams(self) -> list[str]:
        return [keys.presence_stream(p) for p in self.indexes()]

    def call_streams(self) -> list[str]:
        return [keys.call_stream(p) for p in self.indexes()]


async def most_used(redis: aioredis.Redis, partitions: Partitions) -> Partitions:
    """The partitions consumers must read: after the count shrank, the partitions above it may
    still hold entries queued before the change, so up to the largest count ever recorded."""
    raw = await redis.hget(keys.PARTITIONS, "max")
    return Partitions(max(partitions.count, int(raw) if raw else 1))


async def adopt(redis: aioredis.Redis, partitions: Partitions) -> Partitions:
    """Record the count producers use now; returns the partitions consumers must read."""
    read = await most_used(redis, partitions)
    await redis.hset(keys.PARTITIONS, mapping={"count": partitions.count, "max": read.count})
    return read
