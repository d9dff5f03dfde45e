"""Run every benchmark: ``python -m benchmarks [--size tiny|mid] [--only NAME ...]``.

``--compile`` runs the torch.compile benchmark instead (:mod:`benchmarks.compile_speedup`: compiled vs eager UNet
forward of each adapter, ``--only`` picks adapters), written to ``benchmarks/results/compile_<size>.*``;
``--channels-last`` the memory-format benchmark (:mod:`benchmarks.channels_last`, ``channels_last_<size>.*``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
from pathlib import Path

import torch

logger = logging.getLogger("benchmarks")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="tiny", choices=["tiny", "mid", "full"], help="model size to time")
    parser.add_argument("--only", nargs="*", default=None, help="benchmark names, e.g. res_adapter hipa")
    parser.add_argument("--compile", action="store_true", help="time torch.compile vs eager UNet forwards instead")
    parser.add_argument(
        "--channels-last", action="store_true", help="time channels_last vs contiguous UNet forwards instead"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (1 makes CPU-time ratios most robust)"
    )
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.compile:
        from benchmarks import compile_speedup

        compile_speedup.run(size=args.size, only=args.only)
        return
    if args.channels_last:
        from benchmarks import channels_last

        channels_last.run(size=args.size, only=args.only)
        return
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
