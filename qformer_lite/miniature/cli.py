"""``qformer-lite``: train BLIP-2 in miniature, or caption images with a trained checkpoint.

    qformer-lite train --output runs/mini        # every stage, each read from the cache if there
    qformer-lite caption a.png b.png --checkpoint runs/mini
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# Everything runs offline: the stand-ins are built locally, nothing is downloaded.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class CliError(Exception):
    """A problem with the user's input: printed as one line, exit status 2."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qformer-lite", description="BLIP-2 in miniature, on a CPU.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="pretrain the stand-ins, run stage 1 and stage 2 (each unless cached), evaluate")
    train.add_argument("--output", required=True, type=Path, help="folder to write (must not exist, or be empty)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--preset", choices=("default", "quick"), default="default",
                       help="quick: a seconds-long run that exercises every step but learns little")
    train.add_argument("--no-cache", action="store_true",
                       help="train every part anew: read nothing from the cache and write nothing to it")
    train.add_argument("--quiet", action="store_true", help="no progress bars")

    caption = sub.add_parser("caption", help="caption image files with a trained checkpoint")
    caption.add_argument("images", nargs="+", type=Path)
    caption.add_argument("--checkpoint", required=True, type=Path, help="a folder written by `qformer-lite train`")
    caption.add_argument("--num-beams", type=int, default=5)
    return parser


def main(argv: list[str] | None = None) -> int:
    start = time.perf_counter()
    args = _parser().parse_args(argv)
    try:
        if args.command == "train":
            return _train(args, start)
        return _caption(args)
    except CliError as err:
        print(f"qformer-lite: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("qformer-lite: interrupted", file=sys.stderr)
        return 130


def _train(args, start: float) -> int:
    output: Path = args.output
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise CliError(f"--output {output} already exists and is not an empty folder")
    from ..book.plotting import caption_grid, stage1_losses, stage2_losses
    from . import checkpoint
    from .cache import write_atomically
    from .config import MiniatureConfig
    from .train import run

    config = getattr(MiniatureConfig, args.preset)(seed=args.seed)
    result = run(config, progress=not args.quiet, use_cache=not args.no_cache, evaluate_after=True)

    metrics = dict(result.metrics)

    def fill(tmp: Path) -> None:  # into a temporary folder, renamed to --output once complete
        checkpoint.save_checkpoint(result.model, config, result.tokenizer, tmp, stage1=result.stage1)
        stage1_losses(result.stage1_history).savefig(tmp / "stage1_losses.png", dpi=120)
        stage2_losses(result.stage2_history).savefig(tmp / "stage2_loss.png", dpi=120)
        caption_grid(result.test_pool, result.test_captions, n=16).savefig(tmp / "test_captions.png", dpi=120)
        metrics["wall_seconds"] = round(time.perf_counter() - start, 1)  # the command, its lazy imports included
        metrics["stage_seconds"] = {k: round(v, 1) for k, v in result.timings.items()}
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (tmp / "test_captions.json").write_text(json.dumps(
            [{"reference": r, "generated": g} for r, g in zip(result.test_pool.captions, result.test_captions)],
            indent=1) + "\n")

    write_atomically(output, fill)  # --output is absent or empty (checked above)
    print(json.dumps({k: metrics[k] for k in ("caption_exact_match", "image_text_recall_at_1", "wall_seconds")}))
    print(f"wrote {output}")
    return 0


def _load_images(paths: list[Path]):
    from PIL import Image, UnidentifiedImageError

    images = []
    for path in paths:
        if not path.exists():
            raise CliError(f"no such file: {path}")
        if not path.is_file():
            raise CliError(f"not a file: {path}")
        try:
            with Image.open(path) as img:
                images.append(img.convert("RGB"))
        except (UnidentifiedImageError, OSError) as err:
            raise CliError(f"not an image file: {path} ({type(err).__name__})") from None
    return images


def _resize(images, size: int):
    """Square RGB arrays the encoder takes; nearest-neighbour keeps the flat colours flat."""
    import numpy as np
    from PIL import Image

    return np.stack([np.asarray(img if img.size == (size, size) else img.resize((size, size), Image.NEAREST),
                                dtype=np.uint8) for img in images])


def _caption(args) -> int:
    from .checkpoint import load_checkpoint
    from .data import to_tensor
    from .evaluate import generate_captions

    if args.num_beams < 1:
        raise CliError(f"--num-beams must be >= 1, got {args.num_beams}")
    images = _load_images(args.images)  # bad image files are reported before the checkpoint is read
    try:
        model, config, tokenizer = load_checkpoint(args.checkpoint)
    except ValueError as err:
        raise CliError(str(err)) from None
    pixels = to_tensor(_resize(images, config.data.image_size))  # (B, 3, H, W)
    captions = generate_captions(model, tokenizer, pixel_values=pixels, num_beams=args.num_beams,
                                 max_new_tokens=config.max_new_tokens)
    for path, caption in zip(args.images, captions):
        print(f"{path}\t{caption}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
