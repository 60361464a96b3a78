"""Stage 1 trained by two processes of one thread each, as LAVIS trains on several GPUs, against
the usual one process of two threads: wall time, and the held-out accuracy after stage 2.

    python benchmarks/bench_stage1_two_processes.py
    python benchmarks/bench_stage1_two_processes.py --preset quick   # seconds, for tests

On a 2-core CPU a second intra-op thread speeds a small model's step up far less than twofold;
two processes, one per core, each with half of every batch, may do better. This is how LAVIS
trains BLIP-2 anyway (``Blip2Qformer.forward`` in a process group), so the method is the same
one: each rank runs its half of the batch; ITC compares its own images with every rank's texts,
and its own texts with every rank's images, the gathered side carrying no gradient (LAVIS's
``concat_all_gather``; ``losses.py`` does the same in one process); each rank draws its hard
negatives from the whole batch; ITG is per rank; the gradients are averaged over the ranks
before each of ``trainer.fit``'s AdamW steps, in one message (one message a parameter made the
two processes 1.48 times slower than one), so both ranks hold the same weights throughout. Stage 2 and the
evaluation then run as usual, in this process, for both stage-1 models. The stand-ins are read
from the model cache (trained there first if absent); neither stage 1 is cached.
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import time


def rank_losses(model, features, ids, mask, idx, rank, world, dec_token_id, gen, floor, gather):
    """This rank's stage-1 losses on its share of the global batch ``idx`` (B,)."""
    import torch
    import torch.nn.functional as F

    from qformer_lite import losses

    b = idx.shape[0] // world
    mine = idx[rank * b:(rank + 1) * b]  # (b,)
    q_out = model.qformer(features[mine], use_cache=True)
    image_feats = F.normalize(model.vision_proj(q_out.query_output), dim=-1)  # (b, Q, E)
    text_feats = model.text_features(ids[mine], mask[mine])  # (b, E)
    images_all, texts_all = gather(image_feats.detach()), gather(text_feats.detach())  # (B, Q, E), (B, E)
    sim_i2t = losses.itc_similarity_matrix(image_feats, texts_all)  # (b, B)
    sim_t2i = losses.itc_similarity_matrix(images_all, text_feats).t()  # (b, B)
    targets = rank * b + torch.arange(b)  # where each pair sits in the global batch
    temp = model.temp
    loss_itc = (F.cross_entropy(sim_i2t / temp, targets, label_smoothing=0.1)
                + F.cross_entropy(sim_t2i / temp, targets, label_smoothing=0.1)) / 2

    with torch.no_grad():  # drawn from the whole batch, this rank's positives never drawn
        neg_image = torch.multinomial(losses.negative_weights(sim_t2i, temp, floor, positives=targets), 1,
                                      generator=gen).squeeze(1)  # (b,) into idx
        neg_text = torch.multinomial(losses.negative_weights(sim_i2t, temp, floor, positives=targets), 1,
                                     generator=gen).squeeze(1)  # (b,)
    images = torch.cat([features[mine], features[idx[neg_image]], features[mine]])  # (3b, N, C)
    pair_ids = torch.cat([ids[mine], ids[mine], ids[idx[neg_text]]])  # (3b, T)
    pair_mask = torch.cat([mask[mine], mask[mine], mask[idx[neg_text]]])
    labels = torch.cat([torch.ones(b), torch.zeros(2 * b)]).long()
    loss_itm = F.cross_entropy(model.itm_logits(images, pair_ids, pair_mask), labels)

    dec_ids, lm_labels = losses.itg_inputs(ids[mine], mask[mine], dec_token_id)
    text = model.qformer(input_ids=dec_ids, attention_mask=mask[mine], mode="itg",
                         past_key_values=q_out.past_key_values).text_output  # (b, T, D)
    loss_itg = losses.itg_loss(model.lm_logits(text), lm_labels, 0.1)
    return loss_itc + loss_itm + loss_itg


def worker(rank: int, world: int, preset: str, port: int, out: str) -> None:
    import torch
    import torch.distributed as dist
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    from qformer_lite.miniature.config import MiniatureConfig
    from qformer_lite.miniature.standins import encode_images, load_standins
    from qformer_lite.miniature.train import CaptionBatches
    from qformer_lite.miniature.trainer import fit, seeded
    from qformer_lite.pretraining import QFormerPretraining

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    config = MiniatureConfig.quick() if preset == "quick" else MiniatureConfig.default()
    standins = load_standins(config, progress=False)
    features = encode_images(standins.image_encoder, standins.train_pool)  # (N, L, C)
    captions, tokenizer = standins.train_pool.captions, standins.tokenizer
    ids, mask = tokenizer.qformer(captions)
    stage, optim = config.stage1, config.stage1.optim
    with seeded(config.seed + 1):
        model = QFormerPretraining(config.qformer).train()  # the same start on every rank
    batches = CaptionBatches(captions, optim.batch_size, config.seed, stage.related_fraction)  # the same batches
    gen = torch.Generator().manual_seed(1000 * config.seed + rank)  # each rank's own negatives

    params = [p for p in model.parameters() if p.requires_grad]

    def average(*_):  # before every AdamW step: the gradients averaged over the ranks, in one message
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat)
        for p, g in zip(params, torch.split(flat / world, [p.numel() for p in params])):
            p.grad.copy_(g.view_as(p))

    # this process trains nothing else, so a hook on every optimiser's step reaches fit's own
    register_optimizer_step_pre_hook(average)

    def gather(x):
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    def step(_: int) -> dict[str, torch.Tensor]:
        return {"loss": rank_losses(model, features, ids, mask, batches.next(), rank, world, tokenizer.dec_token_id,
                                    gen, stage.negative_floor, gather)}

    dist.barrier()
    start = time.perf_counter()
    fit(model.parameters(), optim, step, "stage 1", progress=False)  # the miniature's one training loop
    seconds = time.perf_counter() - start
    if rank == 0:
        torch.save({"state": model.state_dict(), "seconds": seconds}, out)
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=("default", "quick"), default="default")
    parser.add_argument("--port", type=int, default=0, help="the process group's port (0: a free one)")
    args = parser.parse_args(argv)
    if args.port == 0:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            args.port = s.getsockname()[1]

    import torch
    import torch.multiprocessing as mp

    from qformer_lite.miniature.checkpoint import build_blip2
    from qformer_lite.miniature.config import MiniatureConfig
    from qformer_lite.miniature.evaluate import evaluate
    from qformer_lite.miniature.standins import encode_images, load_standins
    from qformer_lite.miniature.train import Run, train_stage1, train_stage2
    from qformer_lite.pretraining import QFormerPretraining

    config = MiniatureConfig.quick() if args.preset == "quick" else MiniatureConfig.default()
    standins = load_standins(config, progress=False)  # trained and cached here first, if absent
    features = encode_images(standins.image_encoder, standins.train_pool)
    captions, tokenizer = standins.train_pool.captions, standins.tokenizer
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; "
          f"stage 1: {config.stage1.optim.steps} steps of {config.stage1.optim.batch_size}")

    rows = {}
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    t = time.perf_counter()
    one, _ = train_stage1(config, features, captions, tokenizer, progress=False)
    rows["one process, 2 threads"] = (one, time.perf_counter() - t)

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "stage1.pt")
        t = time.perf_counter()
        mp.spawn(worker, args=(2, args.preset, args.port, out), nprocs=2, join=True)
        spawned = time.perf_counter() - t
        saved = torch.load(out)
    two = QFormerPretraining(config.qformer)
    two.load_state_dict(saved["state"])
    rows["two processes, 1 thread each"] = (two.eval(), saved["seconds"])
    print(f"(the two processes' start, stand-ins read and features computed, took "
          f"{spawned - saved['seconds']:.1f} s beside their training)")

    print(f"{'stage 1 by':<30} {'train s':>8} {'exact':>7} {'R@1':>7} {'R@1 ITM':>8}")
    base = None
    for name, (stage1, seconds) in rows.items():
        model = build_blip2(config, standins, stage1.qformer)
        train_stage2(config, model, features, captions, tokenizer, progress=False)
        result = Run(config, standins, stage1, model.eval(), {}, {}, {})
        m = evaluate(result)
        base = base or seconds
        print(f"{name:<30} {seconds:8.1f} {m['caption_exact_match']:7.1%} {m['image_text_recall_at_1']:7.1%} "
              f"{m['image_text_recall_at_1_itm_rerank']:8.1%}   ({seconds / base:.2f} of the first)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
