"""Batched captioning at BLIP-2 size: qformer_lite's Blip2T5 against HF's Blip2ForConditionalGeneration.

Builds the architecture of ``Salesforce/blip2-flan-t5-xl`` with random weights (no download;
``qformer_lite.testing.flan_t5_xl_blip2_config``): EVA ViT-g dimensions (1408 wide, 39 layers, 257
tokens at 224 px), the BLIP-2 Q-Former (768 wide, 12 layers, 32 queries) and Flan-T5-XL
(d_model 2048, 24 + 24 layers, gated GELU, 32128 words) with its ``lm_head`` untied from the
shared embeddings, as in the checkpoint (a T5 built from a config ties them). ``Blip2T5`` is
made from the HF model by ``blip2_t5_from_hf``, so both share the vision encoder and T5
weights and differ only in the Q-Former code. The Q-Former runs in float32 in both, the rest
in ``--dtype`` (InstructBLIP: see below).

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

With ``--instruct`` the model is InstructBLIP-Flan-T5-XL (``Salesforce/instructblip-flan-t5-xl``'s
architecture, ``qformer_lite.testing.instructblip_flan_t5_xl_config``): HF's
``InstructBlipForConditionalGeneration`` against ``InstructBlipT5``, made by
``instructblip_from_hf``. Every image comes with the same instruction, of about the length of
"What is unusual about this image?": 10 tokens in the Q-Former's (BERT's) vocabulary, read
with the queries, and 10 in T5's, after them. HF's input is its placeholders, then the
instruction's T5 tokens. Each Q-Former runs in the precision its loader gives it: HF keeps only
the query tokens in float32 when it reads InstructBLIP in 16 bits (its Q-Former, which does not
cast the image features, cannot run in float32 beside a 16-bit encoder), while
``instructblip_from_hf`` keeps the Q-Former in float32. In 16 bits the soft prompts differ by
that rounding, and the ids may too; in float32 (``--smoke``) they are the same.

    python benchmarks/bench_captioning.py --device cuda              # bf16, BLIP-2 size
    python benchmarks/bench_captioning.py --device cuda --lm opt     # fp16, OPT-2.7B
    python benchmarks/bench_captioning.py --device cuda --instruct   # bf16, InstructBLIP-Flan-T5-XL
    python benchmarks/bench_captioning.py --smoke [--lm opt | --instruct]  # CPU, a small model
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

IMAGE_TOKEN = 32100  # any id of the vocabulary: HF's placeholders for the 32 queries


def full_size_config(lm="t5", instruct=False):
    from qformer_lite.testing import flan_t5_xl_blip2_config, instructblip_flan_t5_xl_config, opt_2_7b_blip2_config

    if instruct:
        return instructblip_flan_t5_xl_config(image_token_index=IMAGE_TOKEN)
    return opt_2_7b_blip2_config() if lm == "opt" else flan_t5_xl_blip2_config(image_token_id=IMAGE_TOKEN)


def smoke_config(lm="t5", instruct=False):
    from qformer_lite.testing import tiny_hf_blip2_config, tiny_hf_blip2_opt_config, tiny_hf_instructblip_config

    if instruct:
        return tiny_hf_instructblip_config("t5")  # its placeholder: the last id of T5's vocabulary
    if lm == "opt":
        return tiny_hf_blip2_opt_config()
    cfg = tiny_hf_blip2_config(text_input=False)
    cfg.image_token_id = 119
    return cfg


def build(cfg, device, dtype, seed=0, lm="t5", instruct=False):
    from transformers import Blip2ForConditionalGeneration, InstructBlipForConditionalGeneration

    from qformer_lite.hf import blip2_opt_from_hf, blip2_t5_from_hf, instructblip_from_hf
    from qformer_lite.testing import untie_lm_head_

    torch.manual_seed(seed)
    with torch.device(device):
        hf = (InstructBlipForConditionalGeneration if instruct else Blip2ForConditionalGeneration)(cfg)
        if lm == "t5":
            untie_lm_head_(hf)  # Flan-T5-XL's head is its own, not the shared embeddings
    with torch.no_grad():
        hf.query_tokens.normal_(0.0, 0.02)  # HF starts them at zero; make them matter
    hf.to(dtype)
    if not instruct:  # from_pretrained keeps BLIP-2's Q-Former in float32, InstructBLIP's query tokens only
        hf.qformer.float()
    if dtype == torch.float16 and lm == "t5":  # and T5's feed-forward output layers, which overflow in fp16
        for name, module in hf.language_model.named_modules():
            if name.endswith(".wo"):
                module.float()
    hf.query_tokens.data = hf.query_tokens.data.float()
    hf.eval()
    load = instructblip_from_hf if instruct else blip2_opt_from_hf if lm == "opt" else blip2_t5_from_hf
    lite = load(hf, device=device)  # shares the vision encoder and the language model with hf
    return hf, lite


def instruction(cfg, batch, device, length=10, seed=3):
    """One instruction for every image, in the Q-Former's tokens ([CLS] words [SEP]) and in
    T5's (words </s>), none of them padding or the image placeholder: (q_ids, q_mask, ids, mask)."""
    gen = torch.Generator().manual_seed(seed)
    q_vocab = cfg.qformer_config.vocab_size
    cls_sep = torch.tensor([101, 102] if q_vocab > 102 else [1, 2])  # BERT's, or the small model's
    q_words = torch.randint(3, q_vocab, (length - 2,), generator=gen)
    q_ids = torch.cat([cls_sep[:1], q_words, cls_sep[1:]])
    words = torch.randint(3, min(cfg.image_token_index, cfg.text_config.vocab_size), (length - 1,), generator=gen)
    ids = torch.cat([words, torch.tensor([cfg.text_config.eos_token_id])])
    q_ids, ids = q_ids.repeat(batch, 1).to(device), ids.repeat(batch, 1).to(device)
    return q_ids, torch.ones_like(q_ids), ids, torch.ones_like(ids)


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
    p.add_argument("--instruct", action="store_true", help="InstructBLIP-Flan-T5-XL instead of BLIP-2")
    p.add_argument("--smoke", action="store_true", help="a small model on the CPU, to check the script runs")
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args(argv)
    if args.instruct and args.lm != "t5":
        p.error("--instruct measures InstructBLIP-Flan-T5-XL: leave --lm at t5")
    if args.smoke:
        args.device, args.batch, args.repeats, args.new_tokens = "cpu", 4, 3, 8
    on_gpu = "float16" if args.lm == "opt" else "bfloat16"  # LAVIS: OPT in float16, T5 in bfloat16
    dtype = getattr(torch, args.dtype or (on_gpu if args.device == "cuda" else "float32"))

    cfg = smoke_config(args.lm, args.instruct) if args.smoke else full_size_config(args.lm, args.instruct)
    t0 = time.perf_counter()
    hf, lite = build(cfg, args.device, dtype, lm=args.lm, instruct=args.instruct)
    build_s = time.perf_counter() - t0
    size = cfg.vision_config.image_size
    pixels = torch.randn(args.batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    pixels = pixels.to(args.device, dtype)
    gen = dict(num_beams=args.beams, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)

    reads, prompt = {}, ()  # what InstructBLIP's Q-Former and T5 read besides the image
    if args.instruct:  # transformers 5: one placeholder per query, then the instruction in T5's tokens
        q_ids, q_mask, ids, mask = instruction(cfg, args.batch, args.device)
        reads, prompt = dict(qformer_input_ids=q_ids, qformer_attention_mask=q_mask), (ids, mask)
        holders = torch.full((args.batch, cfg.num_query_tokens), cfg.image_token_index, device=args.device)
        hf_ids, hf_mask = torch.cat([holders, ids], 1), torch.cat([torch.ones_like(holders), mask], 1)

        def run_hf():
            return hf.generate(pixel_values=pixels, input_ids=hf_ids, attention_mask=hf_mask, **reads, **gen)
    elif args.lm == "opt":  # transformers 5: one placeholder per query, then OPT's </s>
        holders = [cfg.image_token_index] * cfg.num_query_tokens + [cfg.text_config.bos_token_id]
        hf_ids = torch.tensor([holders] * args.batch, device=args.device)

        def run_hf():
            return hf.generate(pixel_values=pixels, input_ids=hf_ids, **gen)[:, hf_ids.shape[1]:]
    else:
        def run_hf():
            return hf.generate(pixel_values=pixels, **gen)  # HF puts q placeholders + </s> in front itself

    def run_lite():
        return lite.generate(pixels, *prompt, **reads, **gen)

    def run_qformer_hf():
        with torch.no_grad():
            return hf.get_image_features(pixels, **reads).pooler_output

    def run_qformer_lite():
        with torch.no_grad():
            return lite.image_prefix(pixels, **reads)[0]

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
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "model": "InstructBLIP" if args.instruct else "BLIP-2", "language_model": args.lm,
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
