import pytest

from qformer_lite import QFormerConfig


def test_blip2_preset_is_the_papers():
    c = QFormerConfig.blip2()
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size) == (768, 12, 12, 3072)
    assert (c.num_query_tokens, c.cross_attention_frequency, c.encoder_hidden_size) == (32, 2, 1408)
    assert (c.vocab_size, c.image_text_hidden_size, c.max_position_embeddings) == (30523, 256, 512)
    assert c.layer_norm_eps == 1e-12 and c.hidden_act == "gelu" and c.head_dim == 64
    assert [i for i in range(12) if c.has_cross_attention(i)] == [0, 2, 4, 6, 8, 10]


def test_tiny_preset_is_small_and_overridable():
    c = QFormerConfig.tiny(num_query_tokens=3)
    assert c.hidden_size <= 128 and c.num_query_tokens == 3


@pytest.mark.parametrize(
    "overrides, words",
    [
        (dict(hidden_size=100, num_attention_heads=12), ["100", "12", "divisible"]),
        (dict(cross_attention_frequency=0), ["cross_attention_frequency", "0"]),
        (dict(cross_attention_frequency=-2), ["cross_attention_frequency", "-2"]),
        (dict(num_query_tokens=0), ["num_query_tokens", "0"]),
        (dict(num_hidden_layers=2.5), ["num_hidden_layers", "2.5"]),
        (dict(hidden_dropout_prob=1.0), ["hidden_dropout_prob", "1.0"]),
        (dict(hidden_act="swish2"), ["hidden_act", "swish2"]),
        (dict(pad_token_id=30523), ["pad_token_id", "30523"]),
    ],
)
def test_invalid_combinations_raise_at_construction(overrides, words):
    with pytest.raises(ValueError) as err:
        QFormerConfig.blip2(**overrides)
    for word in words:
        assert word in str(err.value)


def test_json_round_trip(tmp_path):
    c = QFormerConfig.tiny(cross_attention_frequency=3)
    c.save(tmp_path / "config.json")
    assert QFormerConfig.load(tmp_path / "config.json") == c
    with pytest.raises(ValueError, match="unknown QFormerConfig fields: \\['bogus'\\]"):
        QFormerConfig.from_dict({**c.to_dict(), "bogus": 1})
