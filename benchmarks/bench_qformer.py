"""qformer_lite's QFormer against HuggingFace's Blip2QFormerModel at BLIP-2 size.

Both models hold the same weights (copied through the key map). Each repeat times every
variant once, in turn (interleaved), so drifts of the machine hit all of them alike; the
figures are medians over repeats and the ratios are lite / HF from the same run.

    python benchmarks/bench_qformer.py                   # CPU, fp32, CPU time
    python benchmarks/bench_qformer.py --device cuda --dtype bfloat16
    python benchmarks/bench_qformer.py --smoke           # a small, quick run

Variants: ``hf`` (Blip2QFormerModel, SDPA), ``lite`` (QFormer as shipped: cross-attention
in the form ``qformer_lite.attention.uses_query_side`` picks, i.e. from the query side on the
CPU and the plain form on a GPU), ``lite-plain`` (the plain cross-attention the chapters
teach), ``lite-fast`` (always from the query side, ``query_side_attention``) and ``hf-again``
(HF timed against itself: the noise floor of the ratio). The lite variants set their form with
``qformer_lite.attention.cross_attention_form``.
Peak memory: on CUDA, torch's peak allocation during a step; on the CPU, the peak resident set
(sampled every 0.5 ms) of a fresh process running one step of that variant alone, above its
level once the model is built.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from qformer_lite import QFormer, QFormerConfig
from qformer_lite.attention import cross_attention_form
from qformer_lite.hf import QFORMER_KEY_MAP, load_mapped


def build_models(cfg: QFormerConfig, dtype, device, seed=0):
    from transformers import Blip2QFormerConfig, Blip2QFormerModel

    torch.manual_seed(seed)
    hf_cfg = Blip2QFormerConfig(
        hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads, intermediate_size=cfg.intermediate_size,
        cross_attention_frequency=cfg.cross_attention_frequency, encoder_hidden_size=cfg.encoder_hidden_size,
    )
    hf = Blip2QFormerModel(hf_cfg)
    queries = torch.randn(1, cfg.num_query_tokens, cfg.hidden_size) * 0.02
    lite = QFormer(cfg)
    load_mapped({"qformer." + k: v for k, v in hf.state_dict().items()} | {"query_tokens": queries}, lite, [QFORMER_KEY_MAP])
    return hf.to(device, dtype), lite.to(device, dtype), queries.to(device, dtype)


def make_step(name, hf, lite, queries, images, train):
    model = hf if name.startswith("hf") else lite
    # the lite variants share one model: each step runs in its own form (no copy)
    form = {"lite-plain": "plain", "lite-fast": "query_side"}.get(name, "auto")
    q = queries.expand(images.shape[0], -1, -1)

    def forward():
        if model is hf:
            return hf(query_embeds=q, encoder_hidden_states=images).last_hidden_state
        with cross_attention_form(form):
            return lite(images).query_output

    def step():
        model.train(train)
        if train:
            model.zero_grad(set_to_none=True)
            forward().float().square().mean().backward()
        else:
            with torch.no_grad():
                forward()

    return step


def timed(step, device):
    if device == "cuda":
        torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        return time.perf_counter() - start
    start = time.process_time()  # CPU time: what the run costs, less sensitive to other processes
    step()
    return time.process_time() - start


def measure_speed(args, cfg, dtype):
    hf, lite, queries = build_models(cfg, dtype, args.device)
    g = torch.Generator().manual_seed(1)
    images = torch.randn(args.batch, args.image_tokens, cfg.encoder_hidden_size, generator=g).to(args.device, dtype)
    variants = ["hf", "lite", "lite-plain", "lite-fast", "hf-again"]
    results = {}
    for train in (False, True):
        mode = "train" if train else "eval"
        steps = {v: make_step(v, hf, lite, queries, images, train) for v in variants}
        for v in variants:  # warm-up
            for _ in range(args.warmup):
                steps[v]()
        times = {v: [] for v in variants}
        peaks = {}
        for _ in range(args.repeats):
            for v in variants:
                if args.device == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                times[v].append(timed(steps[v], args.device))
                if args.device == "cuda":
                    peaks[v] = max(peaks.get(v, 0), torch.cuda.max_memory_allocated() - base)
        med = {v: statistics.median(t) for v, t in times.items()}
        pair = {v: statistics.median(a / b for a, b in zip(times[v], times["hf"])) for v in variants}
        results[mode] = {
            "median_seconds": med,
            "ratio_of_medians_vs_hf": {v: med[v] / med["hf"] for v in variants},
            "median_pairwise_ratio_vs_hf": pair,
            "peak_memory_mib": {v: p / 2**20 for v, p in peaks.items()} or None,
        }
    return results


def cpu_peak_rss_child(args, variant, train):
    """Run one variant alone in a fresh process; report its peak RSS above the built-model level."""
    cmd = [sys.executable, __file__, "--rss-child", variant, "--rss-train", str(int(train)),
           "--batch", str(args.batch), "--image-tokens", str(args.image_tokens)] + (["--smoke"] if args.smoke else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def rss_child(args, cfg):
    import threading

    torch.manual_seed(0)
    hf, lite, queries = build_models(cfg, torch.float32, "cpu")
    images = torch.randn(args.batch, args.image_tokens, cfg.encoder_hidden_size)
    step = make_step(args.rss_child, hf, lite, queries, images, bool(int(args.rss_train)))
    (hf if args.rss_child.startswith("lite") else lite).to("meta")  # drop the other model's weights
    import gc

    gc.collect()
    base = peak = _rss_mib()
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss_mib())
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    step()
    done.set()
    sampler.join()
    print(json.dumps({"peak_above_model_mib": peak - base, "peak_rss_mib": peak}))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--image-tokens", type=int, default=257)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--smoke", action="store_true", help="a small config and few repeats, to check the script runs")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--rss-child", help=argparse.SUPPRESS)
    p.add_argument("--rss-train", default="0", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    cfg = QFormerConfig.blip2(use_qformer_text_input=False)
    if args.smoke:
        cfg = QFormerConfig.blip2(
            use_qformer_text_input=False, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
            intermediate_size=256, encoder_hidden_size=192,
        )
        args.repeats, args.warmup = min(args.repeats, 3), 1
    if args.rss_child:
        return rss_child(args, cfg)
    dtype = getattr(torch, args.dtype)

    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {device_name}; torch {torch.__version__}; dtype {args.dtype}")
    print(f"config: {cfg.num_hidden_layers} layers x {cfg.hidden_size}, {cfg.num_query_tokens} queries, "
          f"batch {args.batch}, {args.image_tokens} image tokens x {cfg.encoder_hidden_size}; {args.repeats} repeats")
    results = measure_speed(args, cfg, dtype)
    if args.device == "cpu":
        for mode in results:
            results[mode]["peak_memory_mib"] = {
                v: cpu_peak_rss_child(args, v, mode == "train")["peak_above_model_mib"] for v in ("hf", "lite", "lite-plain", "lite-fast")
            }
    clock = "CPU seconds" if args.device == "cpu" else "seconds"
    for mode, r in results.items():
        print(f"\n{mode}: median {clock} per step, ratio vs hf (of medians | median of pairs), peak memory MiB")
        for v in r["median_seconds"]:
            mem = (r["peak_memory_mib"] or {}).get(v)
            print(f"  {v:<11} {r['median_seconds'][v]:8.4f}   {r['ratio_of_medians_vs_hf'][v]:.3f} | "
                  f"{r['median_pairwise_ratio_vs_hf'][v]:.3f}   " + (f"{mem:8.1f}" if mem is not None else "     -"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device_name, "dtype": args.dtype, "batch": args.batch, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
