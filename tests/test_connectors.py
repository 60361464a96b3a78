"""Chapter 9's connectors: shapes, token counts, and each equal to what it is named after."""

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from qformer_lite import QFormer, QFormerConfig
from qformer_lite.blip2_t5 import Blip2T5
from qformer_lite.connectors import (
    ConnectorT5, LinearProjection, MLPProjection, PerceiverResampler, PooledProjection, QFormerProjection,
)

C, D_MODEL = 48, 40


def features(batch=2, grid=8):
    return torch.randn(batch, 1 + grid * grid, C)  # [CLS] + a grid x grid of patches


@pytest.mark.parametrize("make, m", [
    (lambda: LinearProjection(C, D_MODEL), 64),
    (lambda: MLPProjection(C, D_MODEL), 64),
    (lambda: PooledProjection(C, D_MODEL, 16), 16),
    (lambda: PooledProjection(C, D_MODEL, 4), 4),
    (lambda: PerceiverResampler(C, D_MODEL, 8), 8),
    (lambda: QFormerProjection(QFormer(QFormerConfig.tiny(encoder_hidden_size=C, use_qformer_text_input=False)),
                               D_MODEL), 8),
])
def test_every_connector_maps_features_to_m_soft_prompt_vectors(make, m):
    out = make()(features())
    assert out.shape == (2, m, D_MODEL)


def test_the_patch_connectors_leave_cls_out_and_pooling_averages_each_cell():
    x = features()
    linear = LinearProjection(C, D_MODEL)
    assert torch.allclose(linear(x), linear.proj(x[:, 1:]))
    pooled = PooledProjection(C, D_MODEL, 16)
    grid = rearrange(x[:, 1:], "b (h w) c -> b h w c", h=8)
    cell = grid[:, 2:4, 4:6].mean(dim=(1, 2))  # the cell in row 1, column 2 of a 4 x 4 pooling
    assert torch.allclose(pooled(x)[:, 1 * 4 + 2], pooled.mlp(cell), atol=1e-6)


def test_pooling_refuses_what_it_cannot_pool():
    with pytest.raises(ValueError, match="square number.*got 8"):
        PooledProjection(C, D_MODEL, 8)
    with pytest.raises(ValueError, match="at least 4x4 patches, got 9"):
        PooledProjection(C, D_MODEL, 16)(features(grid=3))
    with pytest.raises(ValueError, match=r"\(B, 1 \+ N, 48\), got \(2, 65, 32\)"):
        LinearProjection(C, D_MODEL)(torch.randn(2, 65, 32))


def test_the_resampler_is_flamingos_written_out():
    torch.manual_seed(0)
    r = PerceiverResampler(C, D_MODEL, 8, depth=2, heads=4, head_dim=16).eval()
    x = features()
    latents = r.latents.expand(2, -1, -1)
    media = x + r.media_pos_emb[0]
    for attn, ff in r.layers:
        m, lat = attn.norm_media(media), attn.norm_latents(latents)
        q = rearrange(attn.to_q(lat), "b n (h d) -> b h n d", h=4) * 16 ** -0.5
        k, v = attn.to_kv(torch.cat([m, lat], dim=1)).chunk(2, dim=-1)
        k, v = (rearrange(t, "b n (h d) -> b h n d", h=4) for t in (k, v))
        out = F.softmax(q @ k.transpose(-2, -1), dim=-1) @ v  # latents attend to [media; latents]
        latents = attn.to_out(rearrange(out, "b h n d -> b n (h d)")) + latents
        latents = ff(latents) + latents
    assert torch.allclose(r(x), r.proj(r.norm(latents)), atol=1e-5)


def test_the_resampler_loads_flamingo_pytorch_weights():
    """Optional: ``pip install flamingo-pytorch==0.1.2 einops-exts==0.0.4`` into .venv to run it."""
    flamingo = pytest.importorskip("flamingo_pytorch", reason="flamingo-pytorch is not installed")
    torch.manual_seed(0)
    theirs = flamingo.PerceiverResampler(dim=C, depth=2, dim_head=16, heads=4, num_latents=8, num_media_embeds=1)
    ours = PerceiverResampler(C, D_MODEL, 8, depth=2, heads=4, head_dim=16)
    missing, unexpected = ours.load_state_dict(theirs.state_dict(), strict=False)
    assert sorted(missing) == ["proj.bias", "proj.weight"] and not unexpected
    x = features()
    assert torch.allclose(ours.resample(x), theirs(x)[:, 0], atol=1e-5)  # theirs: (B, frames, M, C)


def tiny_t5():
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(1)
    config = T5Config(vocab_size=30, d_model=D_MODEL, d_kv=10, d_ff=64, num_layers=1, num_decoder_layers=1,
                      num_heads=4, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, dropout_rate=0.0)
    return T5ForConditionalGeneration(config).eval()


def test_the_qformer_connector_is_blip2_t5():
    torch.manual_seed(0)
    qformer = QFormer(QFormerConfig.tiny(encoder_hidden_size=C, use_qformer_text_input=False)).eval()
    t5 = tiny_t5()
    blip2 = Blip2T5(torch.nn.Identity(), qformer, t5).eval()
    connector = QFormerProjection(qformer, D_MODEL)
    connector.language_projection.load_state_dict(blip2.language_projection.state_dict())
    ours = ConnectorT5(torch.nn.Identity(), connector, t5).eval()
    x, labels = features(), torch.randint(2, 30, (2, 5))
    a, b = blip2(image_embeds=x, labels=labels), ours(image_embeds=x, labels=labels)
    assert torch.equal(a.loss, b.loss) and b.query_output is None
    assert torch.equal(blip2.generate(image_embeds=x, num_beams=2, max_new_tokens=4),
                       ours.generate(image_embeds=x, num_beams=2, max_new_tokens=4))


def test_only_the_connector_trains():
    model = ConnectorT5(torch.nn.Identity(), MLPProjection(C, D_MODEL), tiny_t5()).train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if n.startswith("connector.")}
    assert not model.language_model.training
    with pytest.raises(ValueError, match="pixel_values .* or image_embeds"):
        model(labels=torch.ones(2, 3, dtype=torch.long))
