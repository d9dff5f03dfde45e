"""Run every benchmark: ``python -m benchmarks [--size tiny|mid] [--only NAME ...]``."""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
from pathlib import Path

logger = logging.getLogger("benchmarks")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="tiny", choices=["tiny", "mid", "full"], help="model size to time")
    parser.add_argument("--only", nargs="*", default=None, help="benchmark names, e.g. res_adapter hipa")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    names = sorted(
        m.name.removeprefix("bench_")
        for m in pkgutil.iter_modules([str(Path(__file__).parent)])
        if m.name.startswith("bench_")
    )
    for name in names:
        if args.only and name not in args.only:
            continue
        logger.info("running benchmark %s (%s)", name, args.size)
        module = importlib.import_module(f"benchmarks.bench_{name}")
        module.run(size=args.size)


if __name__ == "__main__":
    main()
