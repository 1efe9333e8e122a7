"""Single-nucleotide DNA tokenizer with the Caduceus/HyenaDNA id layout, so their conventions carry over:

    [CLS]=0 [SEP]=1 [BOS]=2 [MASK]=3 [PAD]=4 [RESERVED]=5 [UNK]=6 A=7 C=8 G=9 T=10 N=11

Input is uppercased (soft-masked repeats are lowercase in UCSC/Ensembl genomes; the case is not sequence), IUPAC
ambiguity codes (R Y S W K M B D H V) become N, RNA's U reads as T, and anything else is [UNK]. Encoding goes
through a 256-entry lookup table, so a whole chromosome encodes in one numpy call.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from mambakit.errors import UserError

SPECIAL_TOKENS = ("[CLS]", "[SEP]", "[BOS]", "[MASK]", "[PAD]", "[RESERVED]", "[UNK]")
BASES = ("A", "C", "G", "T", "N")
VOCAB = (*SPECIAL_TOKENS, *BASES)
IUPAC_AMBIGUITY = "RYSWKMBDHV"
#: Characters a sequence may hold (either case); everything else is an error for the readers.
SEQUENCE_ALPHABET = "ACGTUN" + IUPAC_AMBIGUITY
_COMPLEMENT_BASES = {"A": "T", "C": "G", "G": "C", "T": "A", "N": "N"}
#: Written into tokenizer.json, so that a checkpoint of another domain is recognised.
TOKENIZER_TYPE = "mambakit-dna-char"


class DNATokenizer:
    """Character-level DNA tokenizer (no special tokens are added: a sequence of n bases gives n ids)."""

    cls_token_id = VOCAB.index("[CLS]")
    sep_token_id = VOCAB.index("[SEP]")
    bos_token_id = VOCAB.index("[BOS]")
    mask_token_id = VOCAB.index("[MASK]")
    pad_token_id = VOCAB.index("[PAD]")
    unk_token_id = VOCAB.index("[UNK]")
    #: Ids of A, C, G, T (what MLM's random replacement draws from).
    base_token_ids = tuple(VOCAB.index(base) for base in "ACGT")

    def __init__(self) -> None:
        table = np.full(256, self.unk_token_id, dtype=np.uint8)
        for char in SEQUENCE_ALPHABET:
            token = {"U": "T"}.get(char, "N" if char in IUPAC_AMBIGUITY else char)
            table[ord(char)] = table[ord(char.lower())] = VOCAB.index(token)
        self._table = table
        self._complement = np.array(
            [VOCAB.index(_COMPLEMENT_BASES.get(token, token)) for token in VOCAB], dtype=np.uint8
        )

    @property
    def vocab_size(self) -> int:
        """Number of ids (12)."""
        return len(VOCAB)

    @property
    def vocab(self) -> dict[str, int]:
        """Token -> id."""
        return {token: i for i, token in enumerate(VOCAB)}

    @property
    def complement_map(self) -> tuple[int, ...]:
        """Id -> id of its complement (A<->T, C<->G, N and special tokens map to themselves), as MambaConfig's
        complement_map expects."""
        return tuple(int(i) for i in self._complement)

    def encode(self, sequence: str) -> np.ndarray:
        """A DNA string -> uint8 ids, one per character."""
        return self._table[np.frombuffer(sequence.encode("ascii", errors="replace"), dtype=np.uint8)]

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> the uppercase string; special tokens appear as their names (e.g. "[MASK]")."""
        return "".join(VOCAB[int(i)] for i in ids)

    def first_invalid(self, sequence: str) -> int:
        """Index of the first character that is neither a base nor an IUPAC code (either case), or -1."""
        bad = np.flatnonzero(self.encode(sequence) == self.unk_token_id)
        return int(bad[0]) if bad.size else -1

    def complement_ids(self, ids: np.ndarray) -> np.ndarray:
        """The complement of each id (same order)."""
        return self._complement[ids]

    def reverse_complement_ids(self, ids: np.ndarray) -> np.ndarray:
        """The reverse complement of a 1-D id array."""
        return self._complement[ids[::-1]]

    def reverse_complement(self, sequence: str) -> str:
        """The reverse complement of a DNA string, normalised (uppercase, ambiguity codes as N)."""
        return self.decode(self.reverse_complement_ids(self.encode(sequence)))

    def to_json(self) -> str:
        """The tokenizer as JSON text (saved in checkpoints as tokenizer.json)."""
        data = {
            "type": TOKENIZER_TYPE,
            "vocab": list(VOCAB),
            "complement_map": list(self.complement_map),
            "uppercase": True,
            "ambiguity_to": "N",
        }
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "tokenizer.json") -> DNATokenizer:
        """Read `to_json` output; `source` names the file in error messages. Raises ValueError when the JSON is
        not this tokenizer (another domain's checkpoint, or an id layout this version does not know)."""
        try:
            data: Any = json.loads(text)
        except json.JSONDecodeError as error:
            raise UserError(f"{source}: not valid JSON ({error})") from None
        if not isinstance(data, dict):
            raise UserError(
                f"{source}: expected a JSON object (the genomics tokenizer), got a JSON {type(data).__name__}; "
                f"restore the checkpoint's tokenizer.json"
            )
        kind = data.get("type")
        if kind != TOKENIZER_TYPE:
            raise UserError(
                f"{source}: tokenizer type {kind!r} is not {TOKENIZER_TYPE!r}; is this a genomics checkpoint?"
            )
        tokenizer = cls()
        if data.get("vocab") != list(VOCAB) or data.get("complement_map") != list(tokenizer.complement_map):
            raise UserError(
                f"{source}: the vocabulary or complement map differs from this version's "
                f"{list(VOCAB)}; the checkpoint's ids would be misread"
            )
        return tokenizer

    def pad(self, sequences: Sequence[np.ndarray], length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Right-pad id arrays to a common length (the longest, or `length`) -> ids (b, l) int64 and
        attention_mask (b, l) int64, 1 on real tokens."""
        length = max((len(s) for s in sequences), default=0) if length is None else length
        ids = np.full((len(sequences), length), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(sequences), length), dtype=np.int64)
        for row, sequence in enumerate(sequences):
            n = min(len(sequence), length)
            ids[row, :n], mask[row, :n] = sequence[:n], 1
        return ids, mask
