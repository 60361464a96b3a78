"""Run LAVIS 1.0.2's own stage 1 (``Blip2Qformer.forward``) on a small random Q-Former and save
what ``tests/test_lavis_parity.py`` compares: weights, inputs, the hard negatives drawn and the
weights they were drawn from, the losses, the query outputs, and every parameter's gradient,
once for ITC alone and once for the whole loss.

    .venv-lavis/bin/python tests/lavis/reference.py OUT.pt     (``make test-lavis`` does this)

Nothing is downloaded: the model is built without ``Blip2Qformer.__init__`` (which loads
bert-base-uncased and EVA ViT-g from the hub); the parts it would load are set by hand below.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lavis_stubs  # noqa: E402

lavis_stubs.install()

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import transformers  # noqa: E402
from torch import nn  # noqa: E402

from lavis.models.blip2_models.Qformer import BertConfig, BertLMHeadModel  # noqa: E402
from lavis.models.blip2_models.blip2_qformer import Blip2Qformer  # noqa: E402

# A small Q-Former with BLIP-2's structure; dropout 0 so that both sides compute the same numbers.
SIZES = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
             max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
WORDS = 99  # the tokenizer's vocabulary; [DEC] is appended as id 99
IMAGE_WIDTH, QUERIES, EMBED_DIM = 48, 8, 32
BATCH, PATCHES, TEXT_LEN = 6, 10, 12
PAD, CLS, SEP = 0, 1, 2


class FixedTokenizer:
    """Stands in for bert-base-uncased + [DEC]: whatever the texts, the same ids and masks,
    "[CLS] words [SEP]" padded with 0 to ``max_txt_len``."""

    pad_token_id = PAD
    bos_token_id = WORDS  # [DEC]

    def __init__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        self.input_ids, self.attention_mask = input_ids, attention_mask

    def __len__(self) -> int:
        return WORDS + 1

    def __call__(self, texts, padding, truncation, max_length, return_tensors):
        assert len(texts) == len(self.input_ids) and padding == "max_length" and max_length == TEXT_LEN
        return transformers.BatchEncoding({"input_ids": self.input_ids, "attention_mask": self.attention_mask})


def random_texts(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.randint(4, TEXT_LEN + 1, (BATCH,), generator=generator)  # [CLS] + words + [SEP]
    lengths[0] = TEXT_LEN  # one text fills max_txt_len: every text position is used
    ids = torch.randint(SEP + 1, WORDS, (BATCH, TEXT_LEN), generator=generator)  # (B, T)
    mask = (torch.arange(TEXT_LEN) < lengths[:, None]).long()  # (B, T)
    ids[:, 0] = CLS
    ids[torch.arange(BATCH), lengths - 1] = SEP
    return ids.masked_fill(mask == 0, PAD), mask


def build_model(tokenizer: FixedTokenizer) -> Blip2Qformer:
    """What ``Blip2Qformer.__init__`` builds, from a random config instead of the hub."""
    model = Blip2Qformer.__new__(Blip2Qformer)
    nn.Module.__init__(model)
    model.tokenizer = tokenizer
    model.visual_encoder = nn.Identity()  # the inputs are already image embeddings
    model.ln_vision = nn.Identity()
    config = BertConfig(vocab_size=WORDS, **SIZES)
    config.encoder_width = IMAGE_WIDTH  # the fields init_Qformer adds to BERT's config
    config.add_cross_attention = True
    config.cross_attention_freq = 2
    config.query_length = QUERIES
    model.Qformer = BertLMHeadModel(config)
    model.Qformer.resize_token_embeddings(len(tokenizer))  # + [DEC]
    model.query_tokens = nn.Parameter(torch.randn(1, QUERIES, config.hidden_size) * config.initializer_range)
    model.vision_proj = nn.Linear(config.hidden_size, EMBED_DIM)
    model.text_proj = nn.Linear(config.hidden_size, EMBED_DIM)
    model.itm_head = nn.Linear(config.hidden_size, 2)
    model.temp = nn.Parameter(0.07 * torch.ones([]))
    model.max_txt_len = TEXT_LEN
    # __init__ copies the text FFN into the query FFN; random, distinct weights instead (LayerNorms
    # and biases included) let a swapped or misplaced key show in the outputs, not only in the grads.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name != "temp":
                param.add_(0.02 * torch.randn_like(param))
    return model.train()


class MultinomialRecorder:
    """Wraps ``torch.multinomial`` (which LAVIS calls once per row) and keeps each call."""

    def __init__(self):
        self.real, self.calls = torch.multinomial, []

    def __enter__(self):
        torch.multinomial = self
        return self

    def __exit__(self, *exc):
        torch.multinomial = self.real

    def __call__(self, weights, num_samples, *args, **kwargs):
        drawn = self.real(weights, num_samples, *args, **kwargs)
        self.calls.append((weights.detach().clone(), drawn.clone()))
        return drawn


def main(out_path: str) -> None:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    input_ids, attention_mask = random_texts(generator)
    image_embeds = torch.randn(BATCH, PATCHES, IMAGE_WIDTH, generator=generator)  # (B, N, C)
    model = build_model(FixedTokenizer(input_ids, attention_mask))

    query_outputs = []
    model.Qformer.bert.register_forward_hook(lambda m, args, out: query_outputs.append(out.last_hidden_state))
    start = time.perf_counter()
    with MultinomialRecorder() as recorder:
        out = model({"image": image_embeds, "text_input": ["a caption"] * BATCH})
    forward_s = time.perf_counter() - start
    # LAVIS draws a negative image for each text (rows of weights_t2i), then a text for each image.
    assert len(recorder.calls) == 2 * BATCH, len(recorder.calls)
    weights = torch.stack([w for w, _ in recorder.calls])  # (2B, B)
    drawn = torch.cat([d for _, d in recorder.calls])  # (2B,)

    params = dict(model.named_parameters())  # tied weights once: the LM decoder is the word embeddings
    itc = torch.autograd.grad(out.loss_itc, list(params.values()), retain_graph=True, allow_unused=True)
    start = time.perf_counter()
    out.loss.backward()
    backward_s = time.perf_counter() - start

    torch.save({
        "versions": {"torch": str(torch.__version__), "transformers": transformers.__version__, "lavis": "1.0.2"},
        "config": dict(SIZES, vocab_size=WORDS + 1, encoder_hidden_size=IMAGE_WIDTH, num_query_tokens=QUERIES,
                       image_text_hidden_size=EMBED_DIM, cross_attention_frequency=2, pad_token_id=PAD,
                       dec_token_id=FixedTokenizer.bos_token_id),
        "state_dict": model.state_dict(),
        "inputs": {"image_embeds": image_embeds, "input_ids": input_ids, "attention_mask": attention_mask},
        "query_output": query_outputs[0].detach(),  # the first Qformer.bert call: the queries' ITC pass
        "negatives": {"weights_t2i": weights[:BATCH], "weights_i2t": weights[BATCH:],
                      "neg_image": drawn[:BATCH], "neg_text": drawn[BATCH:]},
        "losses": {k: getattr(out, k).detach() for k in ("loss", "loss_itc", "loss_itm", "loss_lm")},
        "grads": {
            "itc": {n: torch.zeros_like(p) if g is None else g for (n, p), g in zip(params.items(), itc)},
            "total": {n: torch.zeros_like(p) if p.grad is None else p.grad for n, p in params.items()},
        },
        "seconds": {"forward": forward_s, "backward": backward_s},
    }, out_path)
    print(f"LAVIS {Blip2Qformer.__module__} with torch {torch.__version__}, transformers {transformers.__version__}: "
          f"loss {out.loss.item():.6f} (itc {out.loss_itc.item():.6f}, itm {out.loss_itm.item():.6f}, "
          f"lm {out.loss_lm.item():.6f}); forward {forward_s:.2f} s, backward {backward_s:.2f} s -> {out_path}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    Path(sys.argv[1]).parent.mkdir(parents=True, exist_ok=True)
    # LAVIS's forward calls dist.get_rank() and its gathers: a one-process group on the CPU.
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("gloo", init_method=f"file://{os.path.join(tmp, 'rendezvous')}", rank=0, world_size=1)
        try:
            main(sys.argv[1])
        finally:
            dist.destroy_process_group()
