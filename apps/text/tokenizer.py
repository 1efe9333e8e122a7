"""Tokenizers of the text app. The byte-level one (the default when training from scratch): every UTF-8 byte is a
token, so any text (and any language) encodes losslessly with a 256-symbol alphabet plus three specials, and bits
per byte fall straight out of the loss. And any Hugging Face tokenizer.json, through the `tokenizers` library."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mambakit.errors import UserError


@dataclass(frozen=True)
class ByteTokenizer:
    """ids 0..255 are bytes; then [PAD], [BOS], [EOS]."""

    pad_token_id: int = 256
    bos_token_id: int = 257
    eos_token_id: int = 258
    kind: str = "bytes"

    @property
    def vocab_size(self) -> int:
        return 259

    def encode(self, text: str) -> list[int]:
        """UTF-8 bytes of `text` as ids (no specials added)."""
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """`encode` of each text."""
        return [list(text.encode("utf-8")) for text in texts]

    def decode(self, ids: list[int]) -> str:
        """Text of the byte ids; specials are dropped and invalid UTF-8 becomes U+FFFD."""
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def to_json(self) -> str:
        """Saved beside the model as tokenizer.json."""
        return json.dumps({"kind": self.kind}) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "tokenizer.json") -> ByteTokenizer:
        """Read `to_json`'s output; anything else is a one-line UserError naming `source`."""
        data = _parse(text, source)
        kind = data.get("kind") if isinstance(data, dict) else None
        if kind != "bytes":
            raise UserError(f'{source}: {_kind_of(data)} is not mambakit\'s byte tokenizer ({{"kind": "bytes"}})')
        return cls()


#: Names that Hugging Face tokenizers give their end-of-text token, most common first.
EOS_NAMES = ("<|endoftext|>", "</s>", "<eos>", "[EOS]", "<|end_of_text|>", "[SEP]")
PAD_NAMES = ("<pad>", "[PAD]", "<|padding|>")
BOS_NAMES = ("<s>", "<bos>", "[BOS]", "<|begin_of_text|>", "[CLS]")


class HFTokenizer:
    """A Hugging Face tokenizer (a `tokenizer.json` read by the `tokenizers` library; transformers is not needed),
    saved beside the model as that same file, so a mambakit checkpoint is also a Hugging Face-style directory.
    Its end-of-text, padding and beginning ids are found by their usual names (None when it has none).

    One made by `to_train` has no vocabulary until `fit` trains it on the training text."""

    kind = "huggingface"

    def __init__(self, tokenizer: Any = None, to_train: tuple[int, str] | None = None) -> None:
        self.tokenizer, self.to_train = None, to_train
        self.vocab_size = 0
        self.eos_token_id = self.pad_token_id = self.bos_token_id = None
        if tokenizer is not None:
            self._adopt(tokenizer)

    def _adopt(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        vocabulary = tokenizer.get_vocab(with_added_tokens=True)
        self.vocab_size = max(vocabulary.values()) + 1 if vocabulary else 0
        self.eos_token_id = _first_id(vocabulary, EOS_NAMES)
        self.pad_token_id = _first_id(vocabulary, PAD_NAMES)
        self.bos_token_id = _first_id(vocabulary, BOS_NAMES)

    @classmethod
    def to_be_trained(cls, vocab_size: int, model: str = "bpe") -> HFTokenizer:
        """A byte-level BPE (GPT-2's scheme) or Unigram tokenizer of `vocab_size` ids, trained by `fit`."""
        if model not in ("bpe", "unigram"):
            raise UserError(f"unknown tokenizer model {model!r}: bpe or unigram")
        return cls(to_train=(vocab_size, model))

    def fit(self, documents: Iterable[str]) -> None:
        """Train the tokenizer `to_be_trained` made on `documents` (read once, so an iterator will do), with
        "<|endoftext|>" as id 0 between them. Byte-level pieces encode any text without unknowns."""
        assert self.to_train is not None, "fit trains a tokenizer made by to_be_trained"
        tokenizers = _tokenizers()
        (vocab_size, model), end = self.to_train, EOS_NAMES[0]
        alphabet = tokenizers.pre_tokenizers.ByteLevel.alphabet()
        settings = {"vocab_size": vocab_size, "special_tokens": [end], "initial_alphabet": alphabet}
        if model == "bpe":
            tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE())
            trainer: Any = tokenizers.trainers.BpeTrainer(show_progress=False, **settings)
        else:
            tokenizer = tokenizers.Tokenizer(tokenizers.models.Unigram())
            trainer = tokenizers.trainers.UnigramTrainer(show_progress=False, **settings)
        tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = tokenizers.decoders.ByteLevel()
        tokenizer.train_from_iterator(documents, trainer)
        self._adopt(tokenizer)
        self.to_train = None

    @classmethod
    def from_json(cls, text: str, source: str = "tokenizer.json") -> HFTokenizer:
        """The tokenizer of a tokenizer.json's text; one-line ValueError if `tokenizers` cannot read it."""
        tokenizers = _tokenizers()
        try:
            return cls(tokenizers.Tokenizer.from_str(text))
        except Exception as error:  # tokenizers raises its own Exception subclass with a multi-line text
            raise UserError(f"{source}: not a Hugging Face tokenizer ({str(error).splitlines()[0]})") from None

    @classmethod
    def from_path(cls, path: Path) -> HFTokenizer:
        """A tokenizer.json file, or a directory holding one (a Hugging Face model or tokenizer directory)."""
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise UserError(
                f"{path}: no tokenizer.json here (a Hugging Face `tokenizers` file; slow tokenizers need "
                f"converting with transformers' `save_pretrained` first)"
            )
        return cls.from_json(file.read_text(encoding="utf-8"), str(file))

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without the special tokens a template would add."""
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """`encode` of each text, encoded in parallel."""
        return [list(encoding.ids) for encoding in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        """Text of the ids, special tokens dropped."""
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    def to_json(self) -> str:
        """The tokenizer.json text, as `tokenizers` saves it."""
        return str(self.tokenizer.to_str(pretty=True))


def _first_id(vocabulary: dict[str, int], names: tuple[str, ...]) -> int | None:
    return next((vocabulary[name] for name in names if name in vocabulary), None)


def _tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError:
        raise UserError("Hugging Face tokenizers need the `tokenizers` package: pip install 'mambakit[text]'") from None
    return tokenizers


Tokenizer = ByteTokenizer | HFTokenizer


def _parse(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"{source}: not JSON ({error.msg} at line {error.lineno})") from None


def _kind_of(data: Any) -> str:
    if isinstance(data, dict):
        return f"kind {data.get('kind')!r}"
    return f"a JSON {type(data).__name__} (not an object)"


def load_tokenizer(text: str, source: str) -> Tokenizer:
    """The tokenizer a checkpoint's tokenizer.json holds: mambakit's byte tokenizer or a Hugging Face one."""
    data = _parse(text, source)
    if isinstance(data, dict) and data.get("kind") == "bytes":
        return ByteTokenizer()
    if isinstance(data, dict) and "model" in data:
        return HFTokenizer.from_json(text, source)
    raise UserError(
        f"{source}: neither mambakit's byte tokenizer nor a Hugging Face tokenizer.json ({_kind_of(data)}); "
        f"restore the checkpoint's tokenizer.json"
    )
