"""Generation with the recurrent step replayed as a CUDA graph: the same tokens as eager steps, one capture per
batch size and setting, and the off-CUDA behaviour (eager by default, a one-line error when a graph is asked for).

GPU tests are marked `gpu` and skipped without CUDA.
"""

from __future__ import annotations

import copy

import pytest
import torch

from mambakit.cli import main
from mambakit.models import MambaConfig, MambaLMHeadModel, SamplingConfig, generate, generation

TINY = MambaConfig(d_model=32, n_layer=2, vocab_size=37, d_state=8)
GREEDY = SamplingConfig(temperature=0)

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def tiny_model(device: str = "cpu", dtype: torch.dtype | None = None, **changes: object) -> MambaLMHeadModel:
    torch.manual_seed(0)
    return MambaLMHeadModel(TINY.replace(**changes), device=device, dtype=dtype).eval()


@pytest.mark.parametrize("selective", [True, False])
def test_step_updates_the_state_tensors_in_place(selective):
    # What a captured graph relies on: it replays the step on the same state buffers.
    model = tiny_model(selective=selective)
    state = model.allocate_state(2)
    model(torch.randint(0, 37, (2, 5)), state=state)
    before = {id(t): t.clone() for t in generation.state_tensors(state)}
    with torch.no_grad():
        model.step(torch.randint(0, 37, (2,)), state)
    after = generation.state_tensors(state)
    assert {id(t) for t in after} == set(before)
    constant = {id(layer.decay_rates) for layer in state.layers}  # A = -exp(A_log), cached for the steps
    assert all(not torch.equal(t, before[id(t)]) for t in after if id(t) not in constant)


def test_cpu_decodes_eagerly_by_default():
    model = tiny_model()
    prompt = torch.randint(0, 37, (2, 4))
    assert torch.equal(generate(model, prompt, 6, GREEDY), generate(model, prompt, 6, GREEDY, cuda_graph=False))
    assert not hasattr(model, "_decode_graphs")


def test_cuda_graph_on_cpu_is_a_one_line_error():
    with pytest.raises(ValueError, match="cuda_graph=True needs the model and input_ids on a CUDA device") as error:
        generate(tiny_model(), torch.zeros(1, 3, dtype=torch.long), 4, cuda_graph=True)
    assert "\n" not in str(error.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cli_cuda_graph_on_cpu_is_a_one_line_error(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog\n" * 40)
    config = tmp_path / "run.json"
    config.write_text('{"model": {"d_model": 16, "n_layer": 1}}')
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "text",
                "--data",
                str(corpus),
                "--config",
                str(config),
                "--max-steps",
                "1",
                "--out",
                str(out),
                "--seq-len",
                "16",
            ]
        )
        == 0
    )
    capsys.readouterr()
    checkpoint = next(path for path in out.rglob("config.json")).parent
    assert main(["generate", "text", "--checkpoint", str(checkpoint), "--cuda-graph", "--max-new-tokens", "3"]) != 0
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "--cuda-graph needs the model on CUDA" in lines[0], captured.err
    assert main(["generate", "text", "--checkpoint", str(checkpoint), "--no-cuda-graph", "--max-new-tokens", "3"]) == 0


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("batch", [1, 3])
def test_graph_and_eager_greedy_tokens_are_identical(batch):
    model = tiny_model("cuda")
    prompt = torch.randint(0, 37, (batch, 5), device="cuda")
    eager = generate(model, prompt, 40, GREEDY, cuda_graph=False)
    assert torch.equal(generate(model, prompt, 40, GREEDY), eager)  # graphs are the default on CUDA
    assert len(model._decode_graphs) == 1


@pytest.mark.gpu
@gpu
def test_graph_and_eager_sampling_agree_with_a_seed():
    model = tiny_model("cuda")
    prompt = torch.randint(0, 37, (2, 5), device="cuda")
    sampling = SamplingConfig(temperature=0.9, top_k=10, top_p=0.9, repetition_penalty=1.2)
    assert torch.equal(
        generate(model, prompt, 30, sampling, seed=3, cuda_graph=True),
        generate(model, prompt, 30, sampling, seed=3, cuda_graph=False),
    )


@pytest.mark.gpu
@gpu
def test_a_second_call_reuses_the_graph(monkeypatch):
    captures = []

    class CountingGraph(generation._DecodeGraph):
        def __init__(self, *args: object, **kwargs: object) -> None:
            captures.append(args[2])  # the batch size
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(generation, "_DecodeGraph", CountingGraph)
    model = tiny_model("cuda")
    first, second = (torch.randint(0, 37, (3, 5), device="cuda") for _ in range(2))
    generate(model, first, 10, GREEDY)
    out = generate(model, second, 10, GREEDY)
    assert captures == [3]
    assert torch.equal(out, generate(model, second, 10, GREEDY, cuda_graph=False))
    generate(model, first[:1], 10, GREEDY)
    assert captures == [3, 1]
    copy.deepcopy(model)  # a cached graph must not make the model uncopyable
    model.to(torch.bfloat16)  # new weight tensors: the old graphs would read freed memory, so a new capture
    generate(model, first, 10, GREEDY)
    assert captures == [3, 1, 3]


@pytest.mark.gpu
@gpu
def test_bf16_graph_decoding():
    model = tiny_model("cuda", torch.bfloat16)
    prompt = torch.randint(0, 37, (3, 5), device="cuda")
    assert torch.equal(generate(model, prompt, 40, GREEDY), generate(model, prompt, 40, GREEDY, cuda_graph=False))


@pytest.mark.gpu
@gpu
def test_graph_under_autocast_survives_the_autocast_region():
    # fp32 weights under bf16 autocast, as after training; the graph is replayed in a later autocast region, after
    # the first region's cached bf16 weight copies were freed.
    model = tiny_model("cuda")
    prompt = torch.randint(0, 37, (2, 5), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        eager = generate(model, prompt, 40, GREEDY, cuda_graph=False)
        first = generate(model, prompt, 40, GREEDY)
    torch.randn(1 << 22, device="cuda")  # reuse freed memory
    with torch.autocast("cuda", dtype=torch.bfloat16):
        again = generate(model, prompt, 40, GREEDY)
    assert torch.equal(first, eager) and torch.equal(again, eager)
    assert len(model._decode_graphs) == 1
    generate(model, prompt, 4, GREEDY)  # no autocast: another graph
    assert len(model._decode_graphs) == 2
