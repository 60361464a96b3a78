"""Time, held-out accuracy per stage and peak memory of the default miniature run.

    python benchmarks/bench_miniature.py            # stand-ins from the cache if present
    python benchmarks/bench_miniature.py --cold     # rebuild the stand-ins in a fresh cache
    python benchmarks/bench_miniature.py --json out.json

It runs the stages of ``qformer-lite train`` (``train.run``) one by one, with the same defaults
(``MiniatureConfig.default()``) and the same results, and prints one line per stage: wall time, what the stage reached on the held-out split, and
the process's peak resident memory so far (``ru_maxrss``). The goal on two CPU cores:
>= 90% exact-match captions and >= 90% image->text recall@1, in at most five minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time

T0 = time.perf_counter()


def peak_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cold", action="store_true", help="use a fresh, empty cache (stand-ins pretrained)")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.cold:
        os.environ["QFORMER_LITE_CACHE"] = tempfile.mkdtemp(prefix="qformer_lite_bench_")

    import torch

    from qformer_lite import miniature
    from qformer_lite.miniature import MiniatureConfig, build_blip2, load_standins
    from qformer_lite.train import encode_images, exact_match, generate_captions, retrieval, train_stage1, train_stage2

    rows = []

    def row(stage: str, seconds: float, **measures) -> None:
        rows.append({"stage": stage, "seconds": round(seconds, 1), "peak_rss_mb": round(peak_mb()), **measures})
        shown = "  ".join(f"{k} {v:.1%}" if isinstance(v, float) else f"{k} {v}" for k, v in measures.items())
        print(f"{stage:<22} {seconds:7.1f} s   peak {peak_mb():6.0f} MB   {shown}", flush=True)

    config = MiniatureConfig.default(seed=args.seed)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}, cache {'cold' if args.cold else 'as found'}")
    row("import", time.perf_counter() - T0)

    standins = load_standins(config, progress=False)
    cached = "from the cache" if standins.from_cache else "pretrained"
    row("training images", standins.seconds["images"])
    row("image encoder", standins.seconds["image_encoder"], source=cached)
    row("T5", standins.seconds["language_model"], source=cached)

    t = time.perf_counter()
    test_pool = miniature.test_pool(config)
    features = encode_images(standins.image_encoder, standins.train_pool)
    test_features = encode_images(standins.image_encoder, test_pool)
    row("test images, features", time.perf_counter() - t)

    t = time.perf_counter()
    stage1, _ = train_stage1(config, features, standins.train_pool.captions, standins.tokenizer, progress=False)
    seconds = time.perf_counter() - t
    r = retrieval(stage1, test_features, test_pool.captions, standins.tokenizer, config.rerank_k)
    row("stage 1", seconds, recall_at_1=r["recall_at_1"], recall_at_1_itm_rerank=r["recall_at_1_itm_rerank"])

    t = time.perf_counter()
    blip2 = build_blip2(config, standins, stage1.qformer)
    train_stage2(config, blip2, features, standins.train_pool.captions, standins.tokenizer, progress=False)
    seconds = time.perf_counter() - t
    captions = generate_captions(blip2, standins.tokenizer, test_features, num_beams=config.num_beams,
                                 max_new_tokens=config.max_new_tokens)
    row("stage 2", seconds, exact_match=exact_match(captions, test_pool.captions))

    total = time.perf_counter() - T0
    ok = rows[-1]["exact_match"] >= 0.9 and rows[-2]["recall_at_1"] >= 0.9 and total <= 300
    print(f"{'total':<22} {total:7.1f} s   peak {peak_mb():6.0f} MB   "
          f"{'goal met' if ok else 'goal NOT met'} (>= 90% exact match, >= 90% recall@1, <= 300 s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "total_seconds": round(total, 1), "goal_met": ok,
                       "threads": torch.get_num_threads(), "machine": platform.machine(),
                       "load_average_end": os.getloadavg()}, f, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
