"""Mixer, backbone and heads: step() equals forward(), state carries across chunks, pooling ignores padding,
generation by recurrence equals re-running the whole forward, and a tiny LM learns."""

from __future__ import annotations

import json

import pytest
import torch

from mambakit.models import (
    MambaConfig,
    MambaForSequenceClassification,
    MambaForTokenClassification,
    MambaLMHeadModel,
    SamplingConfig,
    generate,
)
from mambakit.models.generation import filter_logits
from mambakit.nn import Mamba

TINY = MambaConfig(d_model=32, n_layer=2, vocab_size=37, d_state=8)


@pytest.mark.parametrize("selective", [True, False])
def test_mixer_step_loop_equals_forward(selective):
    torch.manual_seed(0)
    mixer = Mamba(24, d_state=6, d_conv=3, selective=selective).eval()
    x = torch.randn(3, 19, 24)
    with torch.no_grad():
        full = mixer(x)
        state = mixer.allocate_state(3)
        steps = torch.stack([mixer.step(x[:, t], state) for t in range(19)], dim=1)
    assert (steps - full).abs().max() < 1e-5


@pytest.mark.parametrize("selective", [True, False])
def test_lm_step_and_chunked_forward_equal_forward(selective):
    torch.manual_seed(0)
    model = MambaLMHeadModel(TINY.replace(selective=selective)).eval()
    ids = torch.randint(0, 37, (2, 23))
    with torch.no_grad():
        full = model(ids).logits
        state = model.allocate_state(2)
        steps = torch.stack([model.step(ids[:, t], state) for t in range(23)], dim=1)
        state = model.allocate_state(2)
        chunks = torch.cat([model(ids[:, a:b], state=state).logits for a, b in ((0, 7), (7, 8), (8, 23))], dim=1)
    assert full.shape == (2, 23, 37)
    assert (steps - full).abs().max() < 1e-5
    assert (chunks - full).abs().max() < 1e-5


def test_gradient_flows_through_carried_state():
    torch.manual_seed(0)
    model = MambaLMHeadModel(TINY)
    ids = torch.randint(0, 37, (2, 12))
    state = model.allocate_state(2)
    model(ids[:, :6], state=state)
    loss = model(ids[:, 6:], labels=ids[:, 6:], state=state).loss
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_every_parameter_gets_a_gradient_and_no_weight_decay_tags():
    torch.manual_seed(0)
    model = MambaLMHeadModel(TINY)
    ids = torch.randint(0, 37, (2, 9))
    model(ids, labels=ids).loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert model.no_weight_decay() == {f"backbone.layers.{i}.mixer.{p}" for i in range(2) for p in ("A_log", "D")}


def test_mamba_ssm_initialisation():
    torch.manual_seed(0)
    config = MambaConfig(d_model=64, n_layer=2, vocab_size=10)
    mixer = MambaLMHeadModel(config).backbone.layers[0].mixer
    assert mixer.dt_rank == 4  # ceil(64 / 16)
    torch.testing.assert_close(-torch.exp(mixer.A_log[0]), -torch.arange(1.0, 17.0))
    dt = torch.nn.functional.softplus(mixer.dt_proj.bias)
    assert dt.min() >= 1e-4 and dt.max() <= 0.1 + 1e-6
    assert torch.equal(mixer.D, torch.ones(128))


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = MambaLMHeadModel(TINY)
    ids = torch.randint(0, 37, (2, 9))
    model(ids, labels=ids).loss.backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(ids, labels=ids).loss.backward()
    for a, p in zip(plain, model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, a)


def test_recurrent_greedy_generation_equals_full_forward():
    torch.manual_seed(0)
    model = MambaLMHeadModel(TINY).eval()
    prompt = torch.randint(0, 37, (3, 5))
    generated = generate(model, prompt, 12, SamplingConfig(temperature=0))
    expected = prompt
    with torch.no_grad():
        for _ in range(12):
            expected = torch.cat([expected, model(expected).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generated, expected)


def test_generation_is_seeded_streams_and_stops_at_eos():
    torch.manual_seed(0)
    model = MambaLMHeadModel(TINY).eval()
    prompt = torch.randint(0, 37, (2, 4))
    sampling = SamplingConfig(temperature=0.9, top_k=10, top_p=0.9, min_p=0.05, repetition_penalty=1.3)
    streamed = []
    first = generate(model, prompt, 8, sampling, seed=123, streamer=streamed.append)
    assert torch.equal(first, generate(model, prompt, 8, sampling, seed=123))
    assert torch.equal(torch.stack(streamed, 1), first[:, 4:])
    eos = int(first[0, 4])
    stopped = generate(model, prompt, 8, sampling, seed=123, eos_token_id=eos)
    assert stopped[0, 4] == eos
    assert stopped.shape[1] <= first.shape[1]
    assert model.training is False


def test_sampling_filters():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, SamplingConfig(top_k=2))).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, SamplingConfig(top_p=0.8))).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, SamplingConfig(top_p=0.81))).tolist() == [[False, False, False, True]]
    assert torch.isinf(filter_logits(logits, SamplingConfig(min_p=0.4))).tolist() == [[False, False, True, True]]
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0)


@pytest.mark.parametrize("pooling", ["mean", "last", "cls", "max"])
def test_padding_does_not_change_pooled_outputs(pooling):
    torch.manual_seed(0)
    model = MambaForSequenceClassification(TINY, num_labels=3, pooling=pooling).eval()
    short, long = torch.randint(1, 37, (1, 6)), torch.randint(1, 37, (1, 10))
    batch = torch.zeros(2, 10, dtype=torch.long)
    batch[0, :6], batch[1] = short[0], long[0]
    mask = (torch.arange(10) < torch.tensor([[6], [10]])).long()
    with torch.no_grad():
        padded = model(batch, attention_mask=mask).logits
        alone = torch.cat([model(short).logits, model(long).logits])
    assert (padded - alone).abs().max() < 1e-5


def test_classification_heads_losses():
    torch.manual_seed(0)
    ids = torch.randint(0, 37, (4, 8))
    seq = MambaForSequenceClassification(TINY, num_labels=3)
    out = seq(ids, labels=torch.tensor([0, 1, 2, 1]))
    assert out.logits.shape == (4, 3) and out.loss.ndim == 0
    tok = MambaForTokenClassification(TINY, num_labels=5)
    mask = torch.ones(4, 8, dtype=torch.long)
    mask[:, 6:] = 0
    out = tok(ids, attention_mask=mask, labels=torch.randint(0, 5, (4, 8)))
    assert out.logits.shape == (4, 8, 5) and torch.isfinite(out.loss)


def test_backbone_over_embeddings():
    from mambakit.models import MambaModel

    backbone = MambaModel(MambaConfig(d_model=16, n_layer=1, vocab_size=0))
    assert backbone.embedding is None
    assert backbone(inputs_embeds=torch.randn(2, 5, 16)).shape == (2, 5, 16)
    with pytest.raises(ValueError, match="inputs_embeds"):
        backbone(torch.zeros(2, 5, dtype=torch.long))


def test_config_round_trip_and_dialects(tmp_path):
    config = MambaConfig(d_model=48, n_layer=3, vocab_size=101, d_state=8, dt_rank=5, rms_norm=False)
    assert MambaConfig.from_dict(json.loads(config.to_json())) == config
    assert config.padded_vocab_size == 104 and config.d_inner == 96
    state_spaces = {
        "d_model": 768,
        "n_layer": 24,
        "vocab_size": 50277,
        "ssm_cfg": {},
        "rms_norm": True,
        "residual_in_fp32": True,
        "fused_add_norm": True,
        "pad_vocab_size_multiple": 8,
        "tie_embeddings": True,
        "d_intermediate": 0,
        "attn_layer_idx": [],
        "attn_cfg": {},
    }
    assert MambaConfig.from_dict(state_spaces).padded_vocab_size == 50280
    hf = {
        "model_type": "mamba",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "vocab_size": 50,
        "state_size": 8,
        "conv_kernel": 4,
        "expand": 2,
        "time_step_rank": "auto",
        "hidden_act": "silu",
        "use_cache": True,
        "transformers_version": "5.0",
        "architectures": ["MambaForCausalLM"],
    }
    from_hf = MambaConfig.from_dict(hf)
    assert (from_hf.d_model, from_hf.d_state, from_hf.padded_vocab_size) == (64, 8, 50)
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"d_model": 8, "n_layers": 2}))
    with pytest.raises(ValueError, match=r"config.json: config: unknown keys \['n_layers'\]"):
        MambaConfig.load(path)
    with pytest.raises(ValueError, match="positive integer"):
        MambaConfig(d_model=0)
    with pytest.raises(ValueError, match="Mamba1"):
        MambaConfig.from_dict({"ssm_cfg": {"layer": "Mamba2"}})


@pytest.mark.slow
def test_tiny_lm_learns_a_sequence_task():
    """Arithmetic progressions mod 16 with a random start and step: after two tokens the rest is determined,
    so the loss floor is about (ln 16 + ln 3) / 31 = 0.13 nats per token."""
    torch.manual_seed(0)
    model = MambaLMHeadModel(MambaConfig(d_model=64, n_layer=2, vocab_size=16, d_state=16))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def batch(n=32, length=32):
        start, stride = torch.randint(0, 16, (n, 1)), torch.randint(1, 4, (n, 1))
        return (start + stride * torch.arange(length)) % 16

    initial = model(batch(), labels=batch()).loss.item()
    for _ in range(150):
        ids = batch()
        loss = model(ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        ids = batch(256)
        final = model(ids, labels=ids).loss.item()
    assert initial > 2.5
    assert final < 0.4, f"loss {final:.3f} after training"
