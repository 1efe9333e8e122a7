"""Byte-level tokenizer: every UTF-8 byte is a token, so any text (and any language) encodes losslessly with a
256-symbol alphabet plus three specials. Bits per byte fall straight out of the loss."""

from __future__ import annotations

import json
from dataclasses import dataclass


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

    def decode(self, ids: list[int]) -> str:
        """Text of the byte ids; specials are dropped and invalid UTF-8 becomes U+FFFD."""
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def to_json(self) -> str:
        """Saved beside the model as tokenizer.json."""
        return json.dumps({"kind": self.kind}) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ByteTokenizer:
        data = json.loads(text)
        if data.get("kind") != "bytes":
            raise ValueError(f"tokenizer.json: kind {data.get('kind')!r} is not a byte tokenizer")
        return cls()
