"""Toy teacher and data-pipeline throughput: images/s at 32/64/128 px, captions/s, shard read speed.

Run: ``PYTHONPATH=. python benchmarks/bench_data.py [--n 4000] [--threads 1]``.  Masks are warmed up
first (they are cached per process), so the numbers are the steady-state rate of a long build.
The shard-read number is what ``data.storage=auto`` is decided by (see lightgen/data/toy.py).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=4000, help="images per resolution")
    ap.add_argument("--resolutions", type=int, nargs="+", default=[32, 64, 128])
    args = ap.parse_args()

    from lightgen.config import WorldConfig, load_config
    from lightgen.world.captions import CaptionGenerator, Knobs
    from lightgen.world.toy import ToyWorld

    world = ToyWorld(WorldConfig())
    gen = CaptionGenerator(world, Knobs(1.0, 1.0, 1.0), seed=0)
    t = time.perf_counter()
    items = [gen.item(i) for i in range(args.n)]
    dt = time.perf_counter() - t
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print(f"captions+specs: {args.n / dt:,.0f} items/s (load average {os.getloadavg()[0]:.1f})")
    specs = [s for s, _ in items]
    for res in args.resolutions:
        world.render(specs, res, range(args.n))  # warm the silhouette cache
        t, c = time.perf_counter(), time.process_time()
        world.render(specs, res, range(args.n, 2 * args.n))
        dt, dc = time.perf_counter() - t, time.process_time() - c
        # wall-clock rate, and the rate per CPU-second of this process (robust to a shared, loaded machine)
        print(f"toy teacher {res:>3} px: {args.n / dt:,.0f} images/s wall, {args.n / dc:,.0f} images per CPU-second")

    with tempfile.TemporaryDirectory() as d:
        from lightgen.data import get_dataset

        cfg = load_config(None, [f"tracking.root={d}", f"data.scale={args.n}", "data.resolution=64",
                                 "data.storage=shards", "data.shard_size=1024"])
        t = time.perf_counter()
        ds = get_dataset(cfg)
        print(f"dataset build (64 px, shards): {args.n / (time.perf_counter() - t):,.0f} items/s")
        cfg2 = load_config(None, [f"tracking.root={d}/par", f"data.scale={args.n}", "data.resolution=64",
                                  "data.storage=shards", "data.shard_size=512", "data.num_workers=2"])
        t = time.perf_counter()
        get_dataset(cfg2)
        print(f"dataset build (64 px, shards, 2 workers, incl. spawn): {args.n / (time.perf_counter() - t):,.0f} items/s")
        rng = np.random.default_rng(0)
        ds.get_batch(np.arange(256))  # open + verify shards
        for i in range(len(ds.manifest["shards"])):
            ds.get_batch(np.arange(i * 1024, min(args.n, i * 1024 + 1)))
        batches = [rng.choice(len(ds), 256, replace=False) for _ in range(20)]
        t, c = time.perf_counter(), time.process_time()
        for b in batches:
            ds.get_batch(b)
        dt, dc = time.perf_counter() - t, time.process_time() - c
        print(f"shard read (64 px, random batches of 256, with captions and specs): {20 * 256 / dt:,.0f} images/s "
              f"wall, {20 * 256 / dc:,.0f} images per CPU-second")


if __name__ == "__main__":
    from lightgen.cliutil import run_guarded  # the studio's error boundary: bad input → one line, exit 2

    raise SystemExit(run_guarded(main))
