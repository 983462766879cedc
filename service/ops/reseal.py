"""Re-sealing every stored secret under the current ``BRIDGE_SECRET_KEY``.

The operator sets the new key as ``BRIDGE_SECRET_KEY`` and the old one as
``BRIDGE_SECRET_KEY_PREVIOUS`` on every process, so each reads both and writes the new one; this
pass then rewrites the values still sealed with an old key.  Each value is replaced by a
compare-and-set script, so a value a running process wrote meanwhile is never overwritten with an
older one, and a pass killed half way leaves every value readable with the old or the new key:
running it again finishes the job.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import redis.asyncio as aioredis

from service.core import keys
from service.core.secretbox import SealError, SecretBox
from service.core.storage import run_scripts

# Replace the field only while it still holds the value that was read: 1 when replaced.
_COMPARE_AND_SET = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
    redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
    return 1
end
return 0
"""


@dataclass
class ResealReport:
    """What one pass found: counts per outcome, and the values no configured key opens."""

    resealed: int = 0
    current: int = 0
    raced: int = 0
    unreadable: list[str] = field(default_factory=list)

    @property
    def remaining(self) -> int:
        """Values still not sealed with the current key after this pass."""
        return len(self.unreadable) + self.raced


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


async def reseal(
    redis: aioredis.Redis,
    box: SecretBox,
    *,
    batch_size: int = 200,
    dry_run: bool = False,
    hashes: tuple[str, ...] = keys.SEALED_HASHES,
) -> ResealReport:
    """Rewrite every sealed value not under ``box``'s current key; ``dry_run`` only counts."""
    report = ResealReport()
    script = redis.register_script(_COMPARE_AND_SET)
    for name in hashes:
        cursor = 0
        while True:
            cursor, chunk = await redis.hscan(name, cursor, count=batch_size)
            pending: list[tuple[bytes, bytes, bytes]] = []
            assert isinstance(chunk, dict)  # HSCAN without NOVALUES answers field-value pairs
            for raw_field, raw_value in chunk.items():
                field_name, sealed = _bytes(raw_field), _bytes(raw_value)
                if box.is_current(sealed):
                    report.current += 1
                    continue
                context = f"{name}/{field_name.decode()}"
                try:
                    plaintext = box.open(sealed, context)
                except SealError:
                    report.unreadable.append(context)
                    continue
                pending.append((field_name, sealed, box.seal(plaintext, context)))
            if pending and dry_run:
                report.resealed += len(pending)
            elif pending:
                outcomes = await run_scripts(
                    redis,
                    [(script, [name], [field_name, old, new]) for field_name, old, new in pending],
                    raise_on_error=True,
                )
                for (field_name, _, _), replaced in zip(pending, outcomes, strict=True):
                    if replaced:
                        report.resealed += 1
                    elif not await _current_now(redis, box, name, field_name):
                        report.raced += 1
                    else:
                        report.current += 1  # a running process rewrote it under the new key
            if cursor == 0:
                break
    return report


async def _current_now(redis: aioredis.Redis, box: SecretBox, name: str, field_name: bytes) -> bool:
    value = await redis.hget(name, field_name.decode())
    return value is None or box.is_current(_bytes(value))
