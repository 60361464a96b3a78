"""Batched captioning at BLIP-2 size: qformer_lite's Blip2T5 against HF's Blip2ForConditionalGeneration.

Builds the architecture of ``Salesforce/blip2-flan-t5-xl`` with random weights (no download;
``qformer_lite.testing.flan_t5_xl_blip2_config``): EVA ViT-g dimensions (1408 wide, 39 layers, 257
tokens at 224 px), the BLIP-2 Q-Former (768 wide, 12 layers, 32 queries) and Flan-T5-XL
(d_model 2048, 24 + 24 layers, gated GELU, 32128 words) with its ``lm_head`` untied from the
shared embeddings, as in the checkpoint (a T5 built from a config ties them). ``Blip2T5`` is
made from the HF model by ``blip2_t5_from_hf``, so both share the vision encoder and T5
weights and differ only in the Q-Former code. The Q-Former runs in float32 in both, the rest
in ``--dtype``.

Generation uses LAVIS's defaults (5 beams, an empty prompt) and writes exactly
``--new-tokens`` tokens (min = max) so both variants do the same work. Each repeat times
both variants in turn (interleaved); figures are medians, the ratio is lite / HF images per
second in the same run, beside HF timed against itself (``hf-again``), which shows how far
the ratio moves by noise alone. Peak memory is torch's peak allocation during a call, above what the
shared weights already hold.

With ``--lm opt`` the language model is OPT-2.7B (``Salesforce/blip2-opt-2.7b``'s
architecture, ``qformer_lite.testing.opt_2_7b_blip2_config``) and the model ``Blip2OPT``, made
by ``blip2_opt_from_hf``; float16 by default, as LAVIS runs OPT. HF's input is its
``num_query_tokens`` placeholders and ``</s>``; ``Blip2OPT`` takes nothing (``</s>`` is its
empty prompt), and the ids compared are the new tokens of each.

    python benchmarks/bench_captioning.py --device cuda            # bf16, BLIP-2 size
    python benchmarks/bench_captioning.py --device cuda --lm opt   # fp16, OPT-2.7B
    python benchmarks/bench_captioning.py --smoke [--lm opt]       # CPU, a small model
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

IMAGE_TOKEN = 32100  # any id of the vocabulary: HF's placeholders for the 32 queries


def full_size_config(lm="t5"):
    from qformer_lite.testing import flan_t5_xl_blip2_config, opt_2_7b_blip2_config

    return opt_2_7b_blip2_config() if lm == "opt" else flan_t5_xl_blip2_config(image_token_id=IMAGE_TOKEN)


def smoke_config(lm="t5"):
    from qformer_lite.testing import tiny_hf_blip2_config, tiny_hf_blip2_opt_config

    if lm == "opt":
        return tiny_hf_blip2_opt_config()
    cfg = tiny_hf_blip2_config(text_input=False)
    cfg.image_token_id = 119
    return cfg


def build(cfg, device, dtype, seed=0, lm="t5"):
    from transformers import Blip2ForConditionalGeneration

    from qformer_lite.hf import blip2_opt_from_hf, blip2_t5_from_hf
    from qformer_lite.testing import untie_lm_head_

    torch.manual_seed(seed)
    with torch.device(device):
        hf = Blip2ForConditionalGeneration(cfg)
        if lm == "t5":
            untie_lm_head_(hf)  # Flan-T5-XL's head is its own, not the shared embeddings
    with torch.no_grad():
        hf.query_tokens.normal_(0.0, 0.02)  # HF starts them at zero; make them matter
    hf.to(dtype)
    hf.qformer.float()  # as from_pretrained keeps it (_keep_in_fp32_modules)
    if dtype == torch.float16 and lm == "t5":  # and T5's feed-forward output layers, which overflow in fp16
        for name, module in hf.language_model.named_modules():
            if name.endswith(".wo"):
                module.float()
    hf.query_tokens.data = hf.query_tokens.data.float()
    hf.eval()
    load = blip2_opt_from_hf if lm == "opt" else blip2_t5_from_hf
    lite = load(hf, device=device)  # shares the vision encoder and the language model with hf
    return hf, lite


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, choices=["bfloat16", "float32", "float16"])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--beams", type=int, default=5)
    p.add_argument("--new-tokens", type=int, default=30)
    p.add_argument("--repeats", type=int, default=12)
    p.add_argument("--lm", default="t5", choices=["t5", "opt"], help="Flan-T5-XL (default) or OPT-2.7B")
    p.add_argument("--smoke", action="store_true", help="a small model on the CPU, to check the script runs")
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args(argv)
    if args.smoke:
        args.device, args.batch, args.repeats, args.new_tokens = "cpu", 4, 3, 8
    on_gpu = "float16" if args.lm == "opt" else "bfloat16"  # LAVIS: OPT in float16, T5 in bfloat16
    dtype = getattr(torch, args.dtype or (on_gpu if args.device == "cuda" else "float32"))

    cfg = smoke_config(args.lm) if args.smoke else full_size_config(args.lm)
    t0 = time.perf_counter()
    hf, lite = build(cfg, args.device, dtype, lm=args.lm)
    build_s = time.perf_counter() - t0
    size = cfg.vision_config.image_size
    pixels = torch.randn(args.batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    pixels = pixels.to(args.device, dtype)
    gen = dict(num_beams=args.beams, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)

    if args.lm == "opt":  # transformers 5: one placeholder per query, then OPT's </s>
        holders = [cfg.image_token_index] * cfg.num_query_tokens + [cfg.text_config.bos_token_id]
        hf_ids = torch.tensor([holders] * args.batch, device=args.device)

        def run_hf():
            return hf.generate(pixel_values=pixels, input_ids=hf_ids, **gen)[:, hf_ids.shape[1]:]
    else:
        def run_hf():
            return hf.generate(pixel_values=pixels, **gen)  # HF puts q placeholders + </s> in front itself

    def run_lite():
        return lite.generate(pixels, **gen)

    def run_qformer_hf():
        with torch.no_grad():
            return hf.get_image_features(pixels).pooler_output

    def run_qformer_lite():
        with torch.no_grad():
            return lite.image_prefix(pixels)[0]

    variants = {"hf": run_hf, "lite": run_lite, "hf-again": run_hf}  # hf-again: the noise floor
    prefixes = {"hf": run_qformer_hf, "lite": run_qformer_lite, "hf-again": run_qformer_hf}
    outputs = {v: variants[v]() for v in ("hf", "lite")}  # warm-up, and the outputs to compare
    for f in prefixes.values():
        f()
    same = (outputs["hf"] == outputs["lite"]).all(dim=1).float().mean().item()
    prefix_diff = (run_qformer_hf().float() - run_qformer_lite().float()).abs().max().item()

    times = {v: [] for v in variants}
    prefix_times = {v: [] for v in variants}
    peaks = {}
    order = list(variants)
    for r in range(args.repeats):
        for v in order[r % 3:] + order[: r % 3]:  # rotate, so no variant always runs first
            if args.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            sync(args.device)
            start = time.perf_counter()
            variants[v]()
            sync(args.device)
            times[v].append(time.perf_counter() - start)
            if args.device == "cuda":
                peaks[v] = max(peaks.get(v, 0), (torch.cuda.max_memory_allocated() - base) / 2**20)
            start = time.perf_counter()
            prefixes[v]()
            sync(args.device)
            prefix_times[v].append(time.perf_counter() - start)

    ips = {v: args.batch / statistics.median(t) for v, t in times.items()}
    pairwise = {v: statistics.median(h / t for h, t in zip(times["hf"], times[v])) for v in variants}
    result = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "language_model": args.lm,
        "dtype": str(dtype).removeprefix("torch."), "batch": args.batch, "beams": args.beams,
        "new_tokens": args.new_tokens, "repeats": args.repeats, "build_seconds": build_s,
        "images_per_second": ips, "ratio_lite_over_hf": ips["lite"] / ips["hf"],
        "ratio_hf_again_over_hf": ips["hf-again"] / ips["hf"],
        "median_pairwise_speed_ratio_vs_hf": pairwise,
        "median_prefix_seconds": {v: statistics.median(t) for v, t in prefix_times.items()},
        "peak_memory_above_weights_mib": peaks or None,
        "weights_mib": (torch.cuda.memory_allocated() / 2**20) if args.device == "cuda" else None,
        "max_allocated_total_mib": (torch.cuda.max_memory_allocated() / 2**20) if args.device == "cuda" else None,
        "identical_token_ids_fraction": same, "soft_prompt_max_abs_diff": prefix_diff,
        "params": {"vision": sum(x.numel() for x in hf.vision_model.parameters()),
                   "qformer_and_queries": sum(x.numel() for x in lite.qformer.parameters()),
                   "language_model": sum(x.numel() for x in hf.language_model.parameters())},
    }
    print(json.dumps(result, indent=2))
    print(f"\nimages/s  hf {ips['hf']:.2f}  lite {ips['lite']:.2f}  hf-again {ips['hf-again']:.2f}; "
          f"ratio lite/hf {result['ratio_lite_over_hf']:.3f} (hf-again/hf {result['ratio_hf_again_over_hf']:.3f}); "
          f"identical ids {same:.0%}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
