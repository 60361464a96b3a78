"""Time, held-out accuracy and peak memory of the default miniature run, from nothing.

    python benchmarks/bench_miniature.py
    python benchmarks/bench_miniature.py --json out.json

It runs ``qformer-lite train``'s pipeline (``miniature.train.run``, then its evaluation) with
the same defaults (``MiniatureConfig.default()``) and ``use_cache=False``: every part is
trained, nothing is read from the cache or written to it. It prints one line per part: wall
time and what it reached on the held-out split, then the process's peak resident memory
(``ru_maxrss``). The goal on two CPU cores: >= 90% exact-match captions and >= 90%
image->text recall@1, in at most five minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time

T0 = time.perf_counter()


def peak_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import torch

    from qformer_lite.miniature.config import MiniatureConfig
    from qformer_lite.miniature.train import run

    rows = []

    def row(stage: str, seconds: float, **measures) -> None:
        rows.append({"stage": stage, "seconds": round(seconds, 1), **measures})
        shown = "  ".join(f"{k} {v:.1%}" if isinstance(v, float) else f"{k} {v}" for k, v in measures.items())
        print(f"{stage:<22} {seconds:7.1f} s   {shown}", flush=True)

    config = MiniatureConfig.default(seed=args.seed)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}")
    row("import", time.perf_counter() - T0)
    result = run(config, progress=False, use_cache=False, evaluate_after=True)
    seconds, metrics = result.timings, result.metrics
    row("training images", seconds["standins_images"])
    row("image encoder", seconds["standins_image_encoder"])
    row("T5", seconds["standins_language_model"])
    row("train features", seconds["features"])
    row("stage 1", seconds["stage1"])
    row("stage 2", seconds["stage2"])
    row("evaluation", seconds["evaluation"], exact_match=metrics["caption_exact_match"],
        recall_at_1=metrics["image_text_recall_at_1"],
        recall_at_1_itm_rerank=metrics["image_text_recall_at_1_itm_rerank"])

    total = time.perf_counter() - T0
    ok = metrics["caption_exact_match"] >= 0.9 and metrics["image_text_recall_at_1"] >= 0.9 and total <= 300
    print(f"{'total':<22} {total:7.1f} s   peak {peak_mb():6.0f} MB   "
          f"{'goal met' if ok else 'goal NOT met'} (>= 90% exact match, >= 90% recall@1, <= 300 s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "total_seconds": round(total, 1), "peak_rss_mb": round(peak_mb()), "goal_met": ok,
                       "threads": torch.get_num_threads(), "machine": platform.machine(),
                       "load_average_end": os.getloadavg()}, f, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
