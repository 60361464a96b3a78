"""Variants of the miniature's defaults, each trained and measured beside the defaults themselves.

    python benchmarks/sweep_miniature.py stage1.optim.steps=300,stage1.optim.lr=3e-3 stage2.optim.steps=400

Each argument is one variant: settings of ``MiniatureConfig`` by their dotted names, comma-
separated. The defaults run first, as the baseline of the same run. Every part is read from the
model cache where its settings are already there (so a variant of stage 2 reuses the default
stand-ins and stage 1) and trained, then cached, where not: run it with ``--cache`` pointing at a
scratch folder to keep the variants out of the usual cache. One line per variant: the seconds
each part took to train ("cached" where it was read instead; a stand-in read while the other
was trained shows the seconds of reading it) and the held-out exact match, image-to-text
recall@1 and its ITM re-ranking. Whether a cheaper setting keeps what the chapters need
is read off these lines, never assumed.

    python benchmarks/sweep_miniature.py --seeds 0,1,2 stage1.optim.steps=300

runs the defaults and every variant with each seed (``MiniatureConfig.seed``: the images drawn,
the stand-ins, the initial weights, the batches; the held-out captions stay the same), then
prints each one's mean over the seeds: how far one seed's figures are from the settings' own.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time


def override(config, dotted: str, value):
    """A copy of the dataclass ``config`` with the field at ``dotted`` ("stage1.optim.steps") set."""
    head, _, rest = dotted.partition(".")
    names = [f.name for f in dataclasses.fields(config)]
    if head not in names:
        raise ValueError(f"{type(config).__name__} has no setting {head!r}; it has {', '.join(names)}")
    if rest:
        inner = getattr(config, head)
        if not dataclasses.is_dataclass(inner):
            raise ValueError(f"{type(config).__name__}.{head} is a value, not a group of settings: "
                             f"{head}.{rest} does not exist")
        value = override(inner, rest, value)
    elif dataclasses.is_dataclass(getattr(config, head)):
        raise ValueError(f"{type(config).__name__}.{head} is a group of settings; name one of its fields")
    return dataclasses.replace(config, **{head: value})


def parse_variant(text: str) -> dict:
    """"a.b=3,c=0.5" -> {"a.b": 3, "c": 0.5}; values are read as JSON where they can be."""
    settings = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"each setting must read name=value, got {item!r} in {text!r}")
        try:
            settings[key] = json.loads(raw)
        except json.JSONDecodeError:
            settings[key] = raw
    return settings


def seed_list(text: str) -> list[int]:
    """"0,1,2" -> [0, 1, 2]."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be integers separated by commas, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="*", help="dotted settings, e.g. stage1.optim.steps=300,stage1.optim.lr=3e-3")
    parser.add_argument("--preset", choices=("default", "quick"), default="default")
    parser.add_argument("--cache", help="the model cache to read and fill (default: the usual one)")
    parser.add_argument("--json", help="also write the lines to this file")
    parser.add_argument("--seeds", type=seed_list, metavar="0,1,2",
                        help="run the defaults and every variant with each of these seeds, then their means")
    args = parser.parse_args(argv)
    if args.cache:
        os.environ["QFORMER_LITE_CACHE"] = args.cache

    import torch

    from qformer_lite.miniature.config import MiniatureConfig
    from qformer_lite.miniature.train import run

    base = MiniatureConfig.quick() if args.preset == "quick" else MiniatureConfig.default()
    variants = [("defaults", base)]
    for text in args.variants:
        config = base
        try:
            for key, value in parse_variant(text).items():
                config = override(config, key, value)  # each group's checks run as it is rebuilt
        except (TypeError, ValueError) as err:
            parser.error(f"variant {text!r}: {err}")
        variants.append((text, config))
    if args.seeds:
        if any(config.seed != base.seed for _, config in variants):
            parser.error("a variant sets seed; with --seeds, the seeds are given there, for every variant")
        variants = [(name, override(config, "seed", seed)) for seed in args.seeds for name, config in variants]

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}")
    width = max(len(name) for name, _ in variants)
    print(f"{'variant':<{width}} {'seed':>4} {'ViT s':>6} {'T5 s':>6} {'st.1 s':>7} {'st.2 s':>7} "
          f"{'exact':>7} {'R@1':>7} {'R@1 ITM':>8}")
    measures = ("exact_match", "recall_at_1", "recall_at_1_itm_rerank")
    rows = []
    for name, config in variants:
        start = time.perf_counter()
        result = run(config, progress=False, evaluate_after=True)
        t, m = result.timings, result.metrics
        row = {"variant": name, "seed": config.seed, "image_encoder_s": t["standins_image_encoder"],
               "t5_s": t["standins_language_model"],
               "stage1_s": t["stage1"], "stage2_s": t["stage2"], "total_s": time.perf_counter() - start,
               "exact_match": m["caption_exact_match"], "recall_at_1": m["image_text_recall_at_1"],
               "recall_at_1_itm_rerank": m["image_text_recall_at_1_itm_rerank"]}
        cached = result.from_cache
        for part, hit in (("image_encoder_s", cached["standins"]), ("t5_s", cached["standins"]),
                          ("stage1_s", cached["stage1"]), ("stage2_s", cached["stage2"])):
            row[part] = None if hit else round(row[part], 1)
        rows.append(row)
        shown = [("cached" if row[k] is None else f"{row[k]:.1f}").rjust(w)
                 for k, w in (("image_encoder_s", 6), ("t5_s", 6), ("stage1_s", 7), ("stage2_s", 7))]
        print(f"{name:<{width}} {config.seed:>4} {' '.join(shown)} {row['exact_match']:7.1%} "
              f"{row['recall_at_1']:7.1%} {row['recall_at_1_itm_rerank']:8.1%}", flush=True)
    if args.seeds:
        print(f"mean over seeds {', '.join(map(str, args.seeds))}:")
        for name in dict.fromkeys(row["variant"] for row in rows):
            mine = [row for row in rows if row["variant"] == name]
            means = [sum(row[k] for row in mine) / len(mine) for k in measures]
            print(f"{name:<{width}} {'':>4} {'':>6} {'':>6} {'':>7} {'':>7} {means[0]:7.1%} {means[1]:7.1%} "
                  f"{means[2]:8.1%}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
