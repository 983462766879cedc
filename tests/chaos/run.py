"""The chaos table, run by hand: ``python -m tests.chaos.run [--fault-seconds 300]``.

Each row starts a fresh world (about 5 s), so the whole table takes a few minutes plus the fault
durations.  Rows: changes offered, users wrong at the end, seconds from the repair until every
user is right, dead letters.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from tests.chaos.scenarios import (
    Row,
    calls_burst,
    calls_scenarios,
    teams_burst,
    teams_scenarios,
    worker_killed,
)


async def table(fault_seconds: float, only: str | None) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="pb-chaos-") as scratch:
        for index, (name, fault, seconds) in enumerate(teams_scenarios(fault_seconds)):
            if only and only not in name:
                continue
            rows.append(await teams_burst(name, fault, Path(scratch) / str(index), fault_seconds=seconds))
            print(" | ".join(rows[-1].cells()), flush=True)
        for index, (name, fault, seconds) in enumerate(calls_scenarios(fault_seconds)):
            if only and only not in name:
                continue
            rows.append(
                await calls_burst(name, fault, Path(scratch) / f"calls-{index}", fault_seconds=seconds)
            )
            print(" | ".join(rows[-1].cells()), flush=True)
        if not only or only in "kill -9 worker":
            rows.append(await worker_killed(Path(scratch) / "kill"))
            print(" | ".join(rows[-1].cells()), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--fault-seconds", type=float, default=30.0, help="how long each outage lasts (default 30)"
    )
    parser.add_argument("--only", help="run the rows whose name contains this text")
    args = parser.parse_args()
    rows = asyncio.run(table(args.fault_seconds, args.only))
    header = ["scenario", "offered", "wrong at end", "converged after repair (s)", "dead letters"]
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row.cells()) + " |")


if __name__ == "__main__":
    main()
