"""Where the miniature's training time goes: milliseconds per step of each of its four trainings.

    python benchmarks/profile_miniature.py                 # the default config, batch x1 and x4
    python benchmarks/profile_miniature.py --threads 1 2   # and the thread count

Each training (the ViT stand-in, the T5 stand-in, stage 1, stage 2) runs ``trainer.fit`` for
``--steps`` and for twice as many steps, at its default batch size and at ``--scale`` times
it, on the stand-ins read from the cache (trained there first if absent); the difference of
the two times over ``--steps`` is the cost of one step without the setup, the median of
``--repeats`` pairs. Beside it: the default number of steps and what they cost at that rate,
so the largest part of a cold run shows at a glance.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scale", type=int, nargs="+", default=[1, 4], help="batch-size multipliers")
    parser.add_argument("--threads", type=int, nargs="+", default=None)
    args = parser.parse_args()

    import torch

    from qformer_lite.miniature.checkpoint import build_blip2
    from qformer_lite.miniature.config import MiniatureConfig
    from qformer_lite.miniature.standins import (
        CaptionTokenizer, encode_images, load_standins, pretrain_image_encoder, pretrain_t5,
    )
    from qformer_lite.miniature.train import train_stage1, train_stage2

    config = MiniatureConfig.default()
    standins = load_standins(config, progress=False)
    pool, tokenizer = standins.train_pool, CaptionTokenizer()
    features = encode_images(standins.image_encoder, pool)
    captions = pool.captions

    def with_optim(part, steps: int, scale: int):
        return replace(part, optim=replace(part.optim, steps=steps, batch_size=part.optim.batch_size * scale))

    def vit(steps, scale):
        pretrain_image_encoder(with_optim(config.vision, steps, scale), pool, progress=False)

    def t5(steps, scale):
        pretrain_t5(with_optim(config.language, steps, scale), tokenizer, captions, progress=False)

    def stage1(steps, scale):
        train_stage1(replace(config, stage1=with_optim(config.stage1, steps, scale)), features, captions,
                     tokenizer, progress=False)

    def stage2(steps, scale):
        c = replace(config, stage2=with_optim(config.stage2, steps, scale))
        train_stage2(c, build_blip2(c, standins), features, captions, tokenizer, progress=False)

    parts = [("image encoder", vit, config.vision.optim), ("T5", t5, config.language.optim),
             ("stage 1", stage1, config.stage1.optim), ("stage 2", stage2, config.stage2.optim)]
    print(f"torch {torch.__version__}; {args.steps} and {2 * args.steps} steps per pair, median of {args.repeats}")
    print(f"{'training':<14} {'threads':>7} {'batch':>6} {'ms/step':>8}   default steps -> seconds")
    for threads in args.threads or [torch.get_num_threads()]:
        torch.set_num_threads(threads)
        for name, run, optim in parts:
            for scale in args.scale:
                run(2, scale)  # warm-up: first calls build caches and allocate
                times = []
                for _ in range(args.repeats):
                    seconds = []
                    for steps in (args.steps, 2 * args.steps):
                        t = time.perf_counter()
                        run(steps, scale)
                        seconds.append(time.perf_counter() - t)
                    times.append((seconds[1] - seconds[0]) / args.steps)
                ms = 1000 * statistics.median(times)
                cost = f"{optim.steps} -> {optim.steps * ms / 1000:6.1f}" if scale == 1 else ""
                print(f"{name:<14} {threads:>7} {optim.batch_size * scale:>6} {ms:8.1f}   {cost}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
