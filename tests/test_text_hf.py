"""The text app on Hugging Face checkpoints (#13): a randomly initialised transformers `MambaForCausalLM` saved with
`save_pretrained` beside a tokenizer trained here with `tokenizers` is a text checkpoint as it stands. `mambakit
generate text` gives transformers' own greedy continuation and `mambakit eval text` transformers' loss on the same
windows; `--tokenizer` trains with that tokenizer and saves it with the checkpoint; mismatches are one line."""

from __future__ import annotations

import math

import pytest
import torch

from mambakit.cli import main

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

CORPUS = (
    "the quick brown fox jumps over the lazy dog. a state space model reads a sequence in linear time, "
    "keeping a fixed-size state: selective scans decide what to keep. "
) * 40


def _bpe(vocab_size: int = 300) -> tokenizers.Tokenizer:
    tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE())
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator([CORPUS], trainer)
    return tokenizer


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf-mamba")
    tokenizer = _bpe()
    torch.manual_seed(0)
    config = transformers.MambaConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        state_size=8,
        eos_token_id=0,
        bos_token_id=0,
        pad_token_id=0,
    )
    model = transformers.MambaForCausalLM(config).eval()
    model.save_pretrained(folder)
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder, model, tokenizer


def test_greedy_generation_equals_transformers(hf_checkpoint, capsys):
    folder, model, tokenizer = hf_checkpoint
    prompt = "the quick brown fox"
    arguments = ["generate", "text", "-c", str(folder), "--temperature", "0", "--max-new-tokens", "20"]
    assert main([*arguments, "--prompt", prompt, "--device", "cpu"]) == 0
    ours = capsys.readouterr().out
    ids = tokenizer.encode(prompt).ids
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False)
    expected = prompt + tokenizer.decode(out[0, len(ids) :].tolist(), skip_special_tokens=True)
    assert ours == expected + "\n"


def test_evaluation_loss_equals_transformers_on_the_same_windows(hf_checkpoint, tmp_path, capsys):
    folder, model, tokenizer = hf_checkpoint
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    assert main(["eval", "text", "-c", str(folder), "--data", str(corpus), "--seq-len", "32", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    ours = float(next(line for line in printed.splitlines() if "│ loss" in line).split("│")[2])
    # A file given to eval is scored whole: its tokens and the end-of-text token, in windows of --seq-len.
    tokens = tokenizer.encode(CORPUS).ids + [0]
    windows = torch.tensor(tokens[: len(tokens) // 32 * 32]).view(-1, 32)
    with torch.no_grad():
        expected = model(windows, labels=windows).loss.item()
    assert math.isclose(ours, expected, abs_tol=1e-4)
    # Bits per byte: the same total loss over the UTF-8 bytes of the predicted tokens' text.
    text_bytes = sum(len(tokenizer.decode(row[1:].tolist()).encode()) for row in windows)
    bits_per_byte = float(next(line for line in printed.splitlines() if "bits_per_byte" in line).split("│")[2])
    assert math.isclose(bits_per_byte, expected * windows[:, 1:].numel() / math.log(2) / text_bytes, rel_tol=1e-3)


def test_training_with_a_tokenizer_saves_it_and_generation_reads_it_back(tmp_path, capsys):
    tokenizer_file = tmp_path / "tokenizer.json"
    _bpe().save(str(tokenizer_file))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    out = tmp_path / "run"
    arguments = ["train", "text", "--data", str(corpus), "--tokenizer", str(tokenizer_file), "--seq-len", "32"]
    assert main([*arguments, "--max-steps", "3", "--batch-size", "4", "--out", str(out), "--device", "cpu"]) == 0
    assert (out / "best" / "tokenizer.json").read_text() == tokenizer_file.read_text()
    assert "bits_per_token" in capsys.readouterr().out
    assert main(["generate", "text", "-c", str(out / "best"), "--prompt", "the", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("the")


def test_tokenizer_mistakes_are_one_line(hf_checkpoint, tmp_path, capsys):
    folder, _, _ = hf_checkpoint
    assert main(["train", "text", "--tokenizer", str(tmp_path), "--max-steps", "1"]) == 2
    assert "no tokenizer.json here" in capsys.readouterr().err
    broken = tmp_path / "tokenizer.json"
    broken.write_text('{"model": {"type": "nothing"}}')
    assert main(["train", "text", "--tokenizer", str(broken), "--max-steps", "1"]) == 2
    assert "not a Hugging Face tokenizer" in capsys.readouterr().err
    mismatched = tmp_path / "mismatched"
    mismatched.mkdir()
    for name in ("config.json", "model.safetensors"):
        (mismatched / name).write_bytes((folder / name).read_bytes())
    _bpe(vocab_size=600).save(str(mismatched / "tokenizer.json"))
    assert main(["generate", "text", "-c", str(mismatched), "--prompt", "selective scans decide"]) == 2
    assert "does not belong to these weights" in capsys.readouterr().err


@pytest.mark.parametrize("spec", ["train:300", "train:unigram:300"])
def test_a_tokenizer_trained_on_the_corpus_is_saved_and_used_by_generate(spec, tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    out = tmp_path / "run"
    arguments = ["train", "text", "--data", str(corpus), "--tokenizer", spec, "--seq-len", "32", "--max-steps", "3"]
    assert main([*arguments, "--batch-size", "4", "--out", str(out), "--device", "cpu"]) == 0
    saved = tokenizers.Tokenizer.from_file(str(out / "best" / "tokenizer.json"))
    assert saved.get_vocab_size() <= 300 and saved.token_to_id("<|endoftext|>") == 0
    assert saved.decode(saved.encode(CORPUS[:200]).ids) == CORPUS[:200]  # byte-level: lossless
    capsys.readouterr()
    assert main(["generate", "text", "-c", str(out / "best"), "--prompt", "the lazy", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("the lazy")
    assert main(["train", "text", "--tokenizer", "train:12", "--max-steps", "1"]) == 2
    assert "at least 260 ids" in capsys.readouterr().err


def test_fine_tuning_starts_from_the_pretrained_weights_and_keeps_the_tokenizer(hf_checkpoint, tmp_path, capsys):
    from mambakit.models import load_model

    folder, model, tokenizer = hf_checkpoint
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    out = tmp_path / "tuned"
    arguments = ["train", "text", "--init-from", str(folder), "--data", str(corpus), "--seq-len", "32"]
    # lr 0: one step that changes nothing, so the saved model is the pretrained one.
    assert main([*arguments, "--max-steps", "1", "--batch-size", "4", "--lr", "0", "--out", str(out)]) == 0
    ids = torch.tensor([tokenizer.encode("selective scans decide what to keep").ids])
    with torch.no_grad():
        torch.testing.assert_close(load_model(out / "best")(ids).logits, model(ids).logits, atol=1e-4, rtol=1e-4)
    saved = (out / "best" / "tokenizer.json").read_text()
    assert tokenizers.Tokenizer.from_str(saved).get_vocab() == tokenizer.get_vocab()
    capsys.readouterr()
    assert main([*arguments, "--tokenizer", "train:300", "--out", str(tmp_path / "x")]) == 2
    assert "--init-from keeps the checkpoint's own tokenizer" in capsys.readouterr().err
    assert main(["train", "text", "--init-from", str(tmp_path), "--out", str(tmp_path / "y")]) == 2
    assert "no tokenizer.json there" in capsys.readouterr().err


def _greedy(model, tokenizer, prompt: str, new_tokens: int = 12) -> str:
    ids = tokenizer.encode(prompt).ids
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=new_tokens, do_sample=False)
    return tokenizer.decode(out[0, len(ids) :].tolist(), skip_special_tokens=True)


def test_prompt_files_several_sequences_and_stop_strings(hf_checkpoint, tmp_path, capsys):
    import json

    folder, model, tokenizer = hf_checkpoint
    prompts = ["the quick brown fox", "a state", "selective scans decide what"]
    prompt_file = tmp_path / "prompts.txt"
    prompt_file.write_text("\n".join(prompts) + "\n\n")
    greedy = ["generate", "text", "-c", str(folder), "--temperature", "0", "--max-new-tokens", "12"]
    assert main([*greedy, "--prompts", str(prompt_file), "--num-return-sequences", "2", "--batch-size", "3"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(line["prompt"], line["sequence"]) for line in lines] == [(p, n) for p in prompts for n in (0, 1)]
    for line in lines:  # batched by prompt length, each equal to transformers' own greedy continuation
        assert line["text"] == _greedy(model, tokenizer, line["prompt"])
    expected = _greedy(model, tokenizer, prompts[0])
    stop = expected.strip()[2:5]
    assert len(stop) == 3
    assert main([*greedy, "--prompt", prompts[0], "--stop", stop, "--num-return-sequences", "2"]) == 0
    cut = expected[: expected.index(stop) + len(stop)]
    assert [json.loads(line)["text"] for line in capsys.readouterr().out.splitlines()] == [cut, cut]
    (tmp_path / "empty.txt").write_text("\n")
    assert main([*greedy, "--prompts", str(tmp_path / "empty.txt")]) == 2
    assert "no prompts (one per line)" in capsys.readouterr().err


def _eval_loss(checkpoint, corpus, capsys) -> float:
    capsys.readouterr()
    assert (
        main(["eval", "text", "-c", str(checkpoint), "--data", str(corpus), "--seq-len", "32", "--device", "cpu"]) == 0
    )
    return float(next(line for line in capsys.readouterr().out.splitlines() if "│ loss" in line).split("│")[2])


def test_lora_fine_tuning_saves_adapters_that_reload_with_identical_logits(hf_checkpoint, tmp_path, capsys):
    peft = pytest.importorskip("peft")
    from mambakit.models import load_model

    folder, _, tokenizer = hf_checkpoint
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    out = tmp_path / "lora"
    arguments = [
        "train",
        "text",
        "--init-from",
        str(folder),
        "--data",
        str(corpus),
        "--seq-len",
        "32",
        "--out",
        str(out),
    ]
    lora = ["--lora-rank", "4", "--batch-size", "4", "--lr", "1e-2", "--device", "cpu"]
    assert main([*arguments, *lora, "--max-steps", "20"]) == 0
    assert "LoRA rank 4:" in capsys.readouterr().out
    best = out / "best"
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "run_record.json"} <= {
        path.name for path in best.iterdir()
    }
    assert not (best / "model.safetensors").exists()
    assert (best / "adapter_model.safetensors").stat().st_size < (folder / "model.safetensors").stat().st_size / 3
    # The adapters learned the corpus; loaded by mambakit and by PEFT onto the base, the logits are identical.
    assert _eval_loss(best, corpus, capsys) < _eval_loss(folder, corpus, capsys) - 0.1
    ids = torch.tensor([tokenizer.encode("selective scans decide what to keep").ids])
    with torch.no_grad():
        ours = load_model(best, merge_adapters=False)(ids).logits
        theirs = peft.PeftModel.from_pretrained(load_model(folder), str(best)).eval()(ids).logits
    assert torch.equal(ours, theirs)
    # A resumed run continues from the saved adapters; generation reads the adapter checkpoint.
    assert main([*arguments, *lora, "--max-steps", "25", "--resume"]) == 0
    capsys.readouterr()
    assert main(["generate", "text", "-c", str(best), "--prompt", "the", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("the")
    assert main(["train", "text", "--lora-rank", "4", "--out", str(tmp_path / "x")]) == 2
    assert "--lora-rank adapts a trained model: add --init-from" in capsys.readouterr().err
    assert main([*arguments[:-1], str(tmp_path / "y"), *lora, "--lora-targets", "q_proj"]) == 2
    assert "not Linear layers of this model" in capsys.readouterr().err


def test_a_prompt_past_the_models_positions_is_one_line_before_any_output(tmp_path, capsys):
    config = tmp_path / "learned.yaml"
    config.write_text("model:\n  attn_layer_idx: [1]\n  attn_positions: learned\n  max_position_embeddings: 48\n")
    out = tmp_path / "run"
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    arguments = ["train", "text", "--config", str(config), "--data", str(corpus), "--seq-len", "32"]
    arguments += ["--batch-size", "2", "--max-steps", "1"]
    assert main([*arguments, "--out", str(out), "--device", "cpu"]) == 0
    capsys.readouterr()
    generate = ["generate", "text", "-c", str(out / "best"), "--max-new-tokens", "10", "--device", "cpu"]
    assert main([*generate, "--prompt", "x" * 40]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "the prompt (40 tokens) plus --max-new-tokens 10 pass the model's 48 positions" in captured.err
    assert main([*generate, "--prompt", "x" * 30]) == 0
