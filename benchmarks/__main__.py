"""Run every benchmark module (or the ones named) and print their tables.

Each module in this folder exposes ``main(argv: list[str]) -> None`` that measures and prints a
rich table; ``python -m benchmarks emulator --help`` shows a module's own options.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if not m.name.startswith("_"))


def run(argv: list[str]) -> int:
    names = [a for a in argv if not a.startswith("-")] or available()
    options = [a for a in argv if a.startswith("-")]
    unknown = [n for n in names if n not in available()]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(available())}", file=sys.stderr)
        return 2
    from benchmarks._machine import describe

    print(describe(), flush=True)
    for name in names:
        print(f"\n=== benchmark: {name} ===", flush=True)
        importlib.import_module(f"benchmarks.{name}").main(options)
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
