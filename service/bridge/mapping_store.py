"""Mapping versions in Redis: what the console saves and every worker applies without a restart.

Each save is a new numbered version (TOML text, who, when, note); a roll back saves an old text
again as the newest version, so history is never rewritten.  ``MAPPING_FILE`` (or the built-in
table) is the starting version, and a changed file is stored as a new version at the next worker
start: an administrator who edits the file and restarts still gets what they wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import redis.asyncio as aioredis

from service.bridge.mapping import Mapping, MappingError, parse_mapping
from service.core import keys
from service.core.storage import decoded

log = logging.getLogger(__name__)

_SAVE = """
local number = redis.call('HLEN', KEYS[1]) + 1
redis.call('HSET', KEYS[1], tostring(number), ARGV[1])
redis.call('SET', KEYS[2], tostring(number))
return number
"""


class UnknownVersion(Exception):
    def __init__(self, version: int) -> None:
        self.version = version
        super().__init__(f"mapping version {version} does not exist")


@dataclass(frozen=True)
class MappingVersion:
    number: int
    toml: str
    who: str
    at: float
    note: str

    def mapping(self) -> Mapping:
        return parse_mapping(self.toml, source=f"mapping version {self.number}")

    @classmethod
    def from_json(cls, number: int, raw: bytes | str) -> MappingVersion:
        data = json.loads(raw)
        return cls(number, str(data["toml"]), str(data["who"]), float(data["at"]), str(data.get("note", "")))


def file_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class MappingStore:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis

    async def current_number(self) -> int | None:
        raw = await self.redis.get(keys.MAPPING_CURRENT)
        return int(decoded(raw)) if raw is not None else None

    async def get(self, number: int) -> MappingVersion:
        raw = await self.redis.hget(keys.MAPPING_VERSIONS, str(number))
        if raw is None:
            raise UnknownVersion(number)
        return MappingVersion.from_json(number, raw)

    async def current(self) -> MappingVersion | None:
        number = await self.current_number()
        return None if number is None else await self.get(number)

    async def save(self, toml: str, *, who: str, note: str = "", at: float | None = None) -> MappingVersion:
        """Validate and store ``toml`` as the newest version; raises ``MappingError`` and stores nothing."""
        parse_mapping(toml, source="new mapping")
        at = time.time() if at is None else at
        # Numbering, storing and switching in one script: two saves never share a number, and
        # the newest save is always the current one.
        record = json.dumps({"toml": toml, "who": who, "at": at, "note": note})
        number = int(await self.redis.eval(_SAVE, 2, keys.MAPPING_VERSIONS, keys.MAPPING_CURRENT, record))
        return MappingVersion(number, toml, who, at, note)

    async def roll_back(self, number: int, *, who: str) -> MappingVersion:
        old = await self.get(number)
        return await self.save(old.toml, who=who, note=f"roll back to version {number}")

    async def history(self, limit: int = 50) -> list[MappingVersion]:
        raw = await self.redis.hgetall(keys.MAPPING_VERSIONS)
        versions = [MappingVersion.from_json(int(decoded(k)), v) for k, v in raw.items()]
        return sorted(versions, key=lambda v: v.number, reverse=True)[:limit]

    async def seed(self, toml: str, *, source: str) -> MappingVersion:
        """At worker start: store the file's (or built-in) text as a version when it is new or changed.

        Returns the version to apply: the file's when it changed, else the current one.
        """
        digest = file_digest(toml)
        previous = await self.redis.set(keys.MAPPING_FILE_DIGEST, digest, get=True)
        current = await self.current()
        if current is not None and previous is not None and decoded(previous) == digest:
            return current
        if current is not None and current.toml == toml:
            return current
        return await self.save(toml, who=source, note="starting version from the mapping file")


def diff(old: MappingVersion, new: MappingVersion) -> list[str]:
    """A unified diff of two versions' TOML, for the history page."""
    return list(
        difflib.unified_diff(
            old.toml.splitlines(),
            new.toml.splitlines(),
            fromfile=f"version {old.number}",
            tofile=f"version {new.number}",
            lineterm="",
        )
    )


class MappingFollower:
    """Applies the current version in this process: polled, so a worker that missed a message (or
    was down) still switches; a version that does not parse (written by hand) is skipped and logged."""

    def __init__(
        self,
        store: MappingStore,
        apply: Callable[[Mapping], Awaitable[None]],
        *,
        applied: int | None = None,
        period_seconds: float = 0.5,
    ) -> None:
        self.store = store
        self.apply = apply
        self.applied = applied
        self.period_seconds = period_seconds

    async def poll(self) -> bool:
        number = await self.store.current_number()
        if number is None or number == self.applied:
            return False
        version = await self.store.get(number)
        try:
            mapping = version.mapping()
        except MappingError as exc:
            log.error("mapping version %d cannot be used, keeping version %s: %s", number, self.applied, exc)
            self.applied = number
            return False
        await self.apply(mapping)
        self.applied = number
        log.info("now applying mapping version %d (saved by %s)", number, version.who)
        return True

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.poll()
            except (OSError, aioredis.RedisError) as exc:
                log.warning("cannot read the mapping version: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.period_seconds)


__all__ = [
    "MappingError",
    "MappingFollower",
    "MappingStore",
    "MappingVersion",
    "UnknownVersion",
    "diff",
    "file_digest",
]
