"""A SentencePiece vocabulary numbered as seqio numbers it, without TensorFlow.

`SentencePieceVocabulary(path, extra_ids)` gives the ids, texts and serialized model of
`seqio.SentencePieceVocabulary(path, extra_ids)`: the model's pieces, then `extra_ids` sentinel pieces
`▁<extra_id_N>` counting down (`<extra_id_0>` has the highest id), PAD 0, and `decode` reading up to the first EOS
with ids past the vocabulary as UNK. Python-side tokenizing (infer on text, label candidates, inspect) needs
nothing more, so those paths never load TensorFlow (about 4 s of every call's start-up). Anything else a seqio
task asks of a vocabulary (`encode_tf`, `decode_tf`, ...) is answered by seqio's own vocabulary of the same
file, built on first use: a seqio task may hold this object as its features' vocabulary.
"""
from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import sentencepiece
from sentencepiece import sentencepiece_model_pb2

from jaxprompt.formats import files

PAD_ID = 0


def with_sentinels(model: bytes, extra_ids: int) -> bytes:
  """The serialized model with `extra_ids` user-defined pieces `▁<extra_id_N>` appended, N counting down (seqio
  serializes the parsed model even without extra ids, so the bytes are always re-serialized)."""
  proto = sentencepiece_model_pb2.ModelProto.FromString(model)
  for i in reversed(range(extra_ids)):
    proto.pieces.add(piece=f'▁<extra_id_{i}>', score=0.0,
                     type=sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED)
  return proto.SerializeToString()


class SentencePieceVocabulary:
  """seqio's SentencePiece vocabulary in pure Python (see the module docstring); immutable."""

  def __init__(self, sentencepiece_model_file: str, extra_ids: int = 0):
    self._path = str(sentencepiece_model_file)
    self._extra_ids = int(extra_ids or 0)
    self._sp_model = with_sentinels(files.read_bytes(self._path), self._extra_ids)
    self._tokenizer = sentencepiece.SentencePieceProcessor(model_proto=self._sp_model)

  @property
  def sentencepiece_model_file(self) -> str:
    return self._path

  @property
  def extra_ids(self) -> int:
    return self._extra_ids

  @property
  def sp_model(self) -> bytes:
    """The serialized model, sentinels included (what `models.fingerprint` hashes)."""
    return self._sp_model

  @property
  def tokenizer(self) -> sentencepiece.SentencePieceProcessor:
    return self._tokenizer

  @property
  def vocab_size(self) -> int:
    """Pieces, sentinels included."""
    return self._tokenizer.GetPieceSize()

  @property
  def pad_id(self) -> int:
    return PAD_ID

  @property
  def eos_id(self) -> int:
    return self._tokenizer.eos_id()

  @property
  def unk_id(self) -> int:
    return self._tokenizer.unk_id()

  @property
  def bos_id(self) -> int:
    return self._tokenizer.bos_id()

  @property
  def adds_bos(self) -> bool:
    """Never: seqio's SentencePiece vocabulary puts no BOS in front (a causal stream asks; answered here, the
    question loads no seqio)."""
    return False

  def encode(self, s: str) -> list[int]:
    """Token ids of `s`, without EOS."""
    return self._tokenizer.EncodeAsIds(s)

  def decode(self, ids: Iterable[int]) -> str:
    """The text of `ids` up to (and including) the first EOS; ids past the vocabulary read as UNK."""
    size, unk = self.vocab_size, self.unk_id
    clean = [unk if int(i) >= size else int(i) for i in ids]
    if self.eos_id in clean:
      clean = clean[:clean.index(self.eos_id) + 1]
    return self._tokenizer.DecodeIds(clean)

  def as_seqio(self) -> Any:
    """seqio's vocabulary of the same file and extra ids (imports TensorFlow on the first call)."""
    return _seqio_vocabulary(self._path, self._extra_ids)

  def __getattr__(self, name: str) -> Any:
    # Only reached for names this class lacks: seqio's TensorFlow side (`encode_tf`, `decode_tf`, ...).
    if name.startswith('__') or name in ('_path', '_extra_ids', '_sp_model', '_tokenizer'):
      raise AttributeError(name)
    return getattr(self.as_seqio(), name)

  def __eq__(self, other: object) -> bool:
    if not isinstance(other, SentencePieceVocabulary):
      return NotImplemented
    return self._key() == other._key()

  def __hash__(self) -> int:
    return hash(self._key())

  def _key(self) -> tuple[str, int]:
    return self._path, self._extra_ids

  def __reduce__(self) -> tuple[Any, tuple[str, int]]:
    return type(self), self._key()

  def __deepcopy__(self, memo: dict[int, Any]) -> SentencePieceVocabulary:
    return self  # immutable (gin deep-copies configurable arguments)

  def __repr__(self) -> str:
    return f'SentencePieceVocabulary(file={self._path}, extra_ids={self._extra_ids})'


@functools.cache
def _seqio_vocabulary(path: str, extra_ids: int) -> Any:
  import seqio  # pylint: disable=g-import-not-at-top
  return seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)
