"""Hybrid backbones (#12): attention layers placed among Mamba layers, with or without a gated MLP in every block,
from one MambaConfig: the recurrent path (prefill, steps, generation with a KV cache) reproduces forward,
checkpoints round-trip, mamba-ssm's hybrid config keys load, and what cannot be built says so."""

from __future__ import annotations

import pytest
import torch

from mambakit.models import MambaConfig, MambaLMHeadModel, SamplingConfig, generate, load_model, save_pretrained
from mambakit.nn import AttentionState, CausalSelfAttention, GatedMLP, Mamba

#: Park et al.'s MambaFormer: one Mamba block first (in place of positions), then attention and Mamba alternating.
MAMBAFORMER = {"n_layer": 5, "attn_layer_idx": (1, 3), "attn_positions": "none"}
TRANSFORMER = {"n_layer": 2, "attn_layer_idx": (0, 1), "d_intermediate": 64}
HYBRID_MLP = {"n_layer": 3, "attn_layer_idx": (1,), "d_intermediate": 40}
#: GPT-2's layout: learned absolute positions added to the input.
GPT2 = {
    "n_layer": 2,
    "attn_layer_idx": (0, 1),
    "d_intermediate": 64,
    "attn_positions": "learned",
    "max_position_embeddings": 16,
}


def _model(layout: dict, seed: int = 0) -> MambaLMHeadModel:
    torch.manual_seed(seed)
    config = MambaConfig(d_model=32, vocab_size=40, d_state=8, attn_num_heads=4, **layout)
    return MambaLMHeadModel(config, scan_backend="torch").eval()


@pytest.mark.parametrize(
    "layout", [MAMBAFORMER, TRANSFORMER, HYBRID_MLP, GPT2], ids=["mambaformer", "transformer", "mlp", "learned"]
)
def test_prefill_steps_and_generation_reproduce_forward(layout):
    model = _model(layout)
    mixers = [type(layer.mixer) for layer in model.backbone.layers]
    assert mixers == [CausalSelfAttention if i in layout["attn_layer_idx"] else Mamba for i in range(len(mixers))]
    assert all((layer.mlp is not None) == bool(layout.get("d_intermediate")) for layer in model.backbone.layers)
    ids = torch.randint(0, 40, (2, 14))
    with torch.no_grad():
        expected = model(ids).logits
        state = model.allocate_state(2, max_length=14)
        assert isinstance(state.layers[layout["attn_layer_idx"][0]], AttentionState)
        prefix = model(ids[:, :6], state=state).logits
        stepped = torch.stack([model.step(ids[:, t], state) for t in range(6, 14)], dim=1)
    torch.testing.assert_close(torch.cat([prefix, stepped], dim=1), expected, atol=1e-4, rtol=1e-4)
    out = generate(model, ids[:, :5], max_new_tokens=9, sampling=SamplingConfig(temperature=0))
    with torch.no_grad():
        assert torch.equal(model(out[:, :-1]).logits[:, 4:].argmax(-1), out[:, 5:])


def test_learned_positions_are_used_and_bounded():
    model = _model(GPT2)
    assert model.backbone.position_embedding.weight.shape == (16, 32)
    ids = torch.full((1, 6), 3)
    with torch.no_grad():
        logits = model(ids).logits
        assert not torch.allclose(logits[0, 0], logits[0, 5])  # the same token at two positions differs
        with pytest.raises(ValueError, match="past the 16 learned positions"):
            model(torch.zeros(1, 17, dtype=torch.long))
        with pytest.raises(ValueError, match="past the 16 learned positions"):
            model.allocate_state(1, max_length=17)


def test_checkpoints_round_trip_and_attention_trains(tmp_path):
    model = _model(MAMBAFORMER)
    save_pretrained(model, tmp_path / "mf")
    loaded = load_model(tmp_path / "mf", scan_backend="torch")
    assert loaded.config == model.config and loaded.config.attn_layer_idx == (1, 3)
    ids = torch.randint(0, 40, (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    model.train()
    model(ids, labels=ids).loss.backward()
    attention = model.backbone.layers[1].mixer
    assert attention.in_proj.weight.grad is not None and attention.in_proj.weight.grad.abs().sum() > 0


def test_gated_mlp_width_and_state_spaces_hybrid_config():
    assert GatedMLP(32, 40).fc2.in_features == 128 and GatedMLP(32, 256).fc1.out_features == 512
    config = MambaConfig.from_dict(
        {
            "d_model": 64,
            "n_layer": 4,
            "d_intermediate": 128,
            "attn_layer_idx": [1, 3],
            "attn_cfg": {
                "num_heads": 4,
                "head_dim": 16,
                "rotary_emb_dim": 16,
                "causal": True,
                "out_proj_bias": False,
                "qkv_proj_bias": False,
            },
            "ssm_cfg": {"layer": "Mamba1"},
            "fused_add_norm": True,
        }
    )
    assert (config.attn_layer_idx, config.attn_num_heads, config.attn_positions, config.attn_bias) == (
        (1, 3),
        4,
        "rope",
        False,
    )
    model = MambaLMHeadModel(config.replace(vocab_size=16), scan_backend="torch")
    names = set(model.state_dict())
    assert {
        "backbone.layers.1.mixer.in_proj.weight",
        "backbone.layers.1.norm2.weight",
        "backbone.layers.0.mlp.fc1.weight",
    } <= names
    for attn_cfg, message in [
        ({"num_heads": 4, "rotary_emb_dim": 8}, "rotary_emb_dim 8"),
        ({"num_heads": 4, "num_heads_kv": 2}, "grouped KV heads"),
        ({"num_heads": 4, "d_conv": 4}, "attn_cfg.d_conv"),
    ]:
        with pytest.raises(ValueError, match=message):
            MambaConfig.from_dict({"d_model": 64, "n_layer": 2, "attn_layer_idx": [1], "attn_cfg": attn_cfg})


def test_bad_hybrid_configs_are_refused():
    with pytest.raises(ValueError, match="distinct layer indices in 0..1"):
        MambaConfig(d_model=16, n_layer=2, attn_layer_idx=(2,))
    with pytest.raises(ValueError, match="bidirectional model cannot"):
        MambaConfig(d_model=16, n_layer=2, attn_layer_idx=(1,), bidirectional=True)
    with pytest.raises(ValueError, match="multiple of attn_num_heads"):
        MambaConfig(d_model=20, n_layer=2, attn_layer_idx=(1,), attn_num_heads=8)
    with pytest.raises(ValueError, match="needs max_length"):
        _model(MAMBAFORMER).allocate_state(1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("layout", [MAMBAFORMER, GPT2], ids=["mambaformer", "learned"])
def test_cuda_graph_decoding_with_a_kv_cache_gives_the_eager_tokens(layout):
    model = _model(layout).cuda()
    prompt = torch.randint(0, 40, (3, 5), device="cuda")  # 15 positions in all: within GPT2's 16 learned ones
    greedy = SamplingConfig(temperature=0)
    eager = generate(model, prompt, max_new_tokens=10, sampling=greedy, cuda_graph=False)
    assert torch.equal(generate(model, prompt, max_new_tokens=10, sampling=greedy, cuda_graph=True), eager)
