"""Tokenizers for the text corpora: byte-level BPE trained with `tokenizers`, and plain bytes.

Both map text to int32 ids and back with `decode(encode(x)) == x` for any string, and both
hold two special tokens: `SEPARATOR` (between documents, `sep_id`) and `PAD` (`pad_id`, what
packing fills the last row with). A tokenizer is identified by `fingerprint`, the SHA-256 of
its serialized form, which prepared datasets record and check.
"""
from __future__ import annotations

import hashlib
import pathlib
from collections.abc import Iterable, Sequence

import numpy as np

SEPARATOR = '<|sep|>'
PAD = '<|pad|>'
SPECIALS = (SEPARATOR, PAD)


def _sha256(text: str) -> str:
  return hashlib.sha256(text.encode('utf-8')).hexdigest()


class ByteTokenizer:
  """UTF-8 bytes as ids 0-255, then `SEPARATOR` (256) and `PAD` (257): needs no training."""

  name = 'byte'
  vocab_size = 256 + len(SPECIALS)
  sep_id = 256
  pad_id = 257
  fingerprint = _sha256('jaxkd-byte-tokenizer/1: utf-8 bytes 0-255, <|sep|> 256, <|pad|> 257')

  def encode(self, text: str) -> np.ndarray:
    """int32 `[n]` ids of `text`'s UTF-8 bytes."""
    return np.frombuffer(text.encode('utf-8'), np.uint8).astype(np.int32)

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    return [self.encode(t) for t in texts]

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """The text of `ids`; specials are written as their names, invalid UTF-8 as U+FFFD."""
    ids = np.asarray(ids, np.int64).ravel()
    specials = {self.sep_id: SEPARATOR, self.pad_id: PAD}
    parts, start = [], 0
    for i in np.flatnonzero(ids >= 256).tolist() + [len(ids)]:
      parts.append(bytes(ids[start:i].astype(np.uint8)).decode('utf-8', errors='replace'))
      if i < len(ids):
        parts.append(specials.get(int(ids[i]), '\ufffd'))
      start = i + 1
    return ''.join(parts)


class BPETokenizer:
  """A `tokenizers.Tokenizer` (byte-level BPE) behind the same interface as `ByteTokenizer`.

  Special tokens are matched only as ids: a text that contains `'<|sep|>'` is encoded as its
  characters, so the round trip holds for every string.
  """

  name = 'bpe'

  def __init__(self, serialized: str):
    import tokenizers  # imported when used: `import jaxkd.data` stays light
    self._json = serialized
    self._tok = tokenizers.Tokenizer.from_str(serialized)
    self._tok.encode_special_tokens = True
    self.vocab_size = self._tok.get_vocab_size()
    self.sep_id = self._tok.token_to_id(SEPARATOR)
    self.pad_id = self._tok.token_to_id(PAD)
    if self.sep_id is None or self.pad_id is None:
      raise ValueError(f'A jaxkd BPE tokenizer holds the special tokens {list(SPECIALS)}.')
    self.fingerprint = _sha256(serialized)

  @classmethod
  def from_file(cls, path: str | pathlib.Path) -> BPETokenizer:
    return cls(pathlib.Path(path).read_text(encoding='utf-8'))

  def to_str(self) -> str:
    """The JSON the tokenizer was built from (what `fingerprint` hashes)."""
    return self._json

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, np.int32)

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    encodings = self._tok.encode_batch(list(texts), add_special_tokens=False)
    return [np.asarray(e.ids, np.int32) for e in encodings]

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    return self._tok.decode(np.asarray(ids).ravel().tolist(), skip_special_tokens=False)


def train_bpe(texts: Iterable[str], *, vocab_size: int = 2048) -> BPETokenizer:
  """Byte-level BPE with `vocab_size` ids (the 256 bytes, the two specials, merges).

  Deterministic: the same texts in the same order give the same JSON (checked by the tests).
  """
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  if vocab_size < 256 + len(SPECIALS):
    raise ValueError(f'vocab_size={vocab_size} leaves no room for the 256 bytes and '
                     f'{len(SPECIALS)} special tokens; use the byte tokenizer instead.')
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS),
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train_from_iterator(texts, trainer=trainer)
  return BPETokenizer(tok.to_str())
