"""Chapter 9's connectors, trained from nothing, against the miniature's stage 2 as a yardstick.

    python benchmarks/bench_connectors.py
    python benchmarks/bench_connectors.py --json out.json --baseline-steps 1500

Every connector of ``compare.default_specs()`` is trained on chapter 9's stage-2 task with
nothing read from the cache or written to it, and measured on the held-out split; then, in
the same process, the default miniature's stage 2 (chapter 7's, from its stage-1 Q-Former;
the stand-ins and stage 1 read from the cache, or trained and cached) is trained for
``--baseline-steps`` steps, the yardstick each connector's training time is divided by. The
goal: every connector's training in at most a third of the yardstick's, with 1500 steps (the
miniature's stage 2 before chapter 9), through the T5 stand-in of then, with
``--baseline-t5-layers`` (2) layers each way; today's has one.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--baseline-steps", type=int, default=1500)
    parser.add_argument("--baseline-t5-layers", type=int, default=2)
    args = parser.parse_args()
    import torch

    from qformer_lite.miniature.compare import compare, connector_world
    from qformer_lite.miniature.config import MiniatureConfig
    from qformer_lite.miniature.standins import encode_images, load_standins
    from qformer_lite.miniature.train import cached_stage1, cached_stage2

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}")
    t = time.perf_counter()
    rows = compare(connector_world(), progress=False, use_cache=False)
    total = time.perf_counter() - t

    base = MiniatureConfig.default()
    layers = args.baseline_t5_layers
    base = replace(base, stage2=replace(base.stage2, optim=replace(base.stage2.optim, steps=args.baseline_steps)),
                   language=replace(base.language, num_layers=layers, num_decoder_layers=layers))
    standins = load_standins(base, progress=False)  # the yardstick's start: from the cache if there
    features = encode_images(standins.image_encoder, standins.train_pool)
    stage1, _, _ = cached_stage1(base, standins, features, progress=False)
    t = time.perf_counter()
    cached_stage2(base, standins, features, stage1, progress=False, use_cache=False)
    yardstick = time.perf_counter() - t

    print(f"yardstick: the miniature's stage 2, {args.baseline_steps} steps, T5 of {layers} + {layers} layers: "
          f"{yardstick:.1f} s")
    print(f"{'connector':<20} {'M':>3} {'exact':>6} {'train s':>8} {'/ yardstick':>11}")
    for r in rows:
        r["ratio_to_yardstick"] = r["train_seconds"] / yardstick
        print(f"{r['connector']:<20} {r['M']:>3} {r['exact_match']:>6.1%} {r['train_seconds']:>8.1f} "
              f"{r['ratio_to_yardstick']:>11.2f}")
    print(f"whole comparison (image encoder, stage 1, every connector, evaluation): {total:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(),
                       "yardstick_steps": args.baseline_steps, "yardstick_t5_layers": layers,
                       "yardstick_seconds": yardstick,
                       "comparison_seconds": total, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
