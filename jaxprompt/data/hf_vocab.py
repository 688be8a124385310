"""A Hugging Face model's tokenizer as a vocabulary seqio tasks and the pipeline take: no torch, transformers or
TensorFlow to encode and decode.

`HfVocabulary(folder)` reads `folder/tokenizer.json` with the `tokenizers` library, or, when the model ships only a
SentencePiece `tokenizer.model`, that model with `sentencepiece`. Its ids are the tokenizer's own (id 0 is a real
token in GPT-2, Llama 3 and Qwen2: padding is never told by id); BOS / EOS / PAD / UNK and whether the tokenizer
adds BOS or EOS by itself are resolved from the folder's files as transformers resolves them
(`jaxprompt.data.hf_special_tokens`).

seqio's contract: `encode(text)` gives the text's ids with no special token added (a task appends EOS; the causal
features put BOS in front once, when `adds_bos`: `jaxprompt.data.causal`); `decode(ids)` reads up to the first
stop id and skips special tokens (transformers' `decode(..., skip_special_tokens=True)`). `encode_tf` / `decode_tf`
(what a seqio task's `tokenize` step calls) run the same Python code inside tf.data and import TensorFlow only
when called. `sp_model` is the byte string the frozen-model fingerprint hashes (`models.fingerprint` reads that
name on every vocabulary): the tokenizer in canonical JSON (or the SentencePiece model) and the resolved ids.
"""
from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from jaxprompt.data import hf_special_tokens
from jaxprompt.errors import DataError
from jaxprompt.formats import files

TOKENIZER_FILE = 'tokenizer.json'
SPM_FILE = 'tokenizer.model'
SLOW_FILES = ('vocab.txt', 'vocab.json', 'merges.txt')  # BERT's WordPiece; GPT-2's and RoBERTa's BPE
PROBE = 'a'  # a text every tokenizer encodes to real tokens: what the post-processor adds around it is told apart


class _JsonTokenizer:
  """tokenizer.json through `tokenizers`: its own post-processor adds what the model expects (transformers 5 reads
  tokenizer_config.json's add_bos_token / add_eos_token only when there is no tokenizer.json)."""

  def __init__(self, path: str, folder: str):
    import tokenizers  # pylint: disable=g-import-not-at-top
    try:
      self.tokenizer = tokenizers.Tokenizer.from_str(files.read_bytes(path).decode('utf-8'))
    except Exception as e:  # pylint: disable=broad-except  (the Rust parser raises plain Exception)
      raise DataError(f'{path}: not a Hugging Face tokenizer file ({type(e).__name__}: '
                      f'{str(e).splitlines()[0] if str(e) else ""})') from e
    self.special = hf_special_tokens.resolve(folder, self.tokenizer.token_to_id, path)

  def size(self) -> int:
    return self.tokenizer.get_vocab_size(with_added_tokens=True)

  def encode(self, text: str, specials: bool) -> list[int]:
    return self.tokenizer.encode(text, add_special_tokens=specials).ids

  def encode_with_types(self, text: str, pair: str | None) -> tuple[list[int], list[int]]:
    encoding = self.tokenizer.encode(text, pair, add_special_tokens=True)
    return encoding.ids, encoding.type_ids

  def decode(self, ids: Sequence[int]) -> str:
    return self.tokenizer.decode(list(ids), skip_special_tokens=True)

  def serialized(self) -> bytes:
    return json.dumps(json.loads(self.tokenizer.to_str()), sort_keys=True).encode()


class _SentencePieceTokenizer:
  """tokenizer.model through `sentencepiece`; BOS in front when tokenizer_config.json's add_bos_token says so, or
  when it is silent and the model has a BOS piece (transformers' Llama converter adds it then)."""

  def __init__(self, path: str, folder: str):
    import sentencepiece  # pylint: disable=g-import-not-at-top
    self.model = files.read_bytes(path)
    try:
      self.sp = sentencepiece.SentencePieceProcessor(model_proto=self.model)
    except Exception as e:  # pylint: disable=broad-except  (sentencepiece raises RuntimeError / protobuf errors)
      raise DataError(f'{path}: not a SentencePiece model ({type(e).__name__}: {e})') from e
    defaults = {'bos': self.sp.bos_id(), 'eos': self.sp.eos_id(), 'unk': self.sp.unk_id(), 'pad': self.sp.pad_id()}
    special = hf_special_tokens.resolve(folder, self.token_to_id, path)
    filled = {
        k: getattr(special, k) if getattr(special, k) is not None else (v if v >= 0 else None)
        for k, v in defaults.items()
    }
    stop = special.stop or ((filled['eos'],) if filled['eos'] is not None else ())
    self.special = hf_special_tokens.SpecialIds(
        **filled, stop=stop, add_bos=filled['bos'] is not None if special.add_bos is None else special.add_bos,
        add_eos=bool(special.add_eos))

  def token_to_id(self, text: str) -> int | None:
    i = self.sp.PieceToId(text)
    return i if self.sp.IdToPiece(i) == text else None

  def size(self) -> int:
    return self.sp.GetPieceSize()

  def encode(self, text: str, specials: bool) -> list[int]:
    ids = self.sp.EncodeAsIds(text)
    if specials:
      s = self.special
      ids = ([s.bos] if s.add_bos and s.bos is not None else []) + ids + ([s.eos]
                                                                          if s.add_eos and s.eos is not None else [])
    return ids

  def decode(self, ids: Sequence[int]) -> str:
    return self.sp.DecodeIds(list(ids))

  def serialized(self) -> bytes:
    return self.model


def _tokenizer(folder: str) -> _JsonTokenizer | _SentencePieceTokenizer:
  if not files.isdir(folder):
    raise DataError(f'tokenizer folder {folder} does not exist (give the Hugging Face model folder holding '
                    f'{TOKENIZER_FILE} or {SPM_FILE})')
  for name, kind in ((TOKENIZER_FILE, _JsonTokenizer), (SPM_FILE, _SentencePieceTokenizer)):
    path = os.path.join(folder, name)
    if files.exists(path):
      return kind(path, folder)
  slow = [n for n in SLOW_FILES if files.exists(os.path.join(folder, n))]
  if slow:  # a folder saved before tokenizers' fast format: transformers converts it, and can write the result
    raise DataError(
        f'{folder} has neither {TOKENIZER_FILE} nor {SPM_FILE}, only a slow tokenizer\'s {", ".join(slow)}: '
        f'write {TOKENIZER_FILE} into it once with transformers, '
        f"AutoTokenizer.from_pretrained('{folder}').save_pretrained('{folder}')")
  raise DataError(f'{folder} has neither {TOKENIZER_FILE} nor {SPM_FILE}: not a Hugging Face tokenizer folder')


def _around(with_specials: list[int], plain: list[int]) -> tuple[list[int], list[int]]:
  """(ids before, ids after) `plain` inside `with_specials`: what a post-processor put around a text."""
  for start in range(len(with_specials) - len(plain) + 1):
    if with_specials[start:start + len(plain)] == plain:
      return with_specials[:start], with_specials[start + len(plain):]
  return [], []


class HfVocabulary:
  """A Hugging Face tokenizer folder as a seqio-style vocabulary (see the module docstring); immutable."""

  def __init__(self, folder: str):
    folder = os.fspath(folder)
    if os.path.basename(folder) in (TOKENIZER_FILE, SPM_FILE):
      folder = os.path.dirname(folder) or '.'
    self._folder = folder
    self._tokenizer = _tokenizer(folder)
    self._special = self._tokenizer.special
    before, after = _around(self._tokenizer.encode(PROBE, True), self._tokenizer.encode(PROBE, False))
    self._around = (tuple(before), tuple(after))
    self._adds_bos = self._special.bos is not None and self._special.bos in before
    self._adds_eos = self._special.eos is not None and self._special.eos in after

  @property
  def folder(self) -> str:
    return self._folder

  @property
  def specials_around(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(ids before, ids after) the tokenizer's post-processor puts around any text ([CLS] / [SEP], <s> / </s>)."""
    return self._around

  @property
  def extra_ids(self) -> int:
    return 0

  @property
  def vocab_size(self) -> int:
    """Token ids, added tokens included (a model's embedding table may hold more rows)."""
    return self._tokenizer.size()

  @property
  def bos_id(self) -> int | None:
    return self._special.bos

  @property
  def eos_id(self) -> int | None:
    return self._special.eos

  @property
  def unk_id(self) -> int | None:
    return self._special.unk

  @property
  def pad_id(self) -> int | None:
    """The tokenizer's PAD, else EOS (what `generate` pads with); batches mark padding by a mask, not by this id."""
    return self._special.pad if self._special.pad is not None else self._special.eos

  @property
  def stop_ids(self) -> tuple[int, ...]:
    """Every id that ends a generated text (the tokenizer's EOS first, then the generation config's)."""
    return self._special.stop

  @property
  def adds_bos(self) -> bool:
    """Whether the tokenizer puts BOS in front of a text (Llama: yes, GPT-2: no): the model was trained so."""
    return self._adds_bos

  @property
  def adds_eos(self) -> bool:
    return self._adds_eos

  def encode(self, s: str) -> list[int]:
    """Token ids of `s`, no special token added."""
    return self._tokenizer.encode(s, False)

  def encode_with_specials(self, s: str) -> list[int]:
    """Token ids of `s` as transformers' `tokenizer(s)` gives them (BOS / EOS where the tokenizer adds them)."""
    return self._tokenizer.encode(s, True)

  def encode_with_types(self, text: str, pair: str | None = None) -> tuple[list[int], list[int]]:
    """(ids, token type ids) of `text` (and `pair`) as transformers' `tokenizer(text, pair)` gives them, the
    post-processor's specials included (BERT's `[CLS] a [SEP] b [SEP]`, types 0 then 1)."""
    if not isinstance(self._tokenizer, _JsonTokenizer):
      raise DataError(f'{self._folder}: a SentencePiece-only tokenizer has no post-processor for text pairs: give '
                      f'the model folder with its {TOKENIZER_FILE}')
    return self._tokenizer.encode_with_types(text, pair)

  def decode(self, ids: Iterable[int]) -> str:
    """The text of `ids` up to the first stop id, special tokens skipped; ids outside the vocabulary read as UNK
    (dropped when there is none)."""
    size, unk, clean = self.vocab_size, self.unk_id, []
    for i in (int(i) for i in ids):
      if i in self._special.stop:
        break
      if 0 <= i < size:
        clean.append(i)
      elif unk is not None:
        clean.append(unk)
    return self._tokenizer.decode(clean)

  def encode_tf(self, s: Any) -> Any:
    """`encode` of a scalar string tensor inside tf.data: int32 [n]."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top  (tokenizing in Python needs none)
    ids = tf.numpy_function(lambda text: np.asarray(self.encode(text.decode('utf-8')), np.int32), [s], tf.int32,
                            stateful=False)
    ids.set_shape([None])
    return ids

  def decode_tf(self, ids: Any) -> Any:
    """`decode` of int ids [..., n] inside TensorFlow: string [...]."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    def texts(rows: np.ndarray) -> np.ndarray:
      flat = rows.reshape(-1, rows.shape[-1]) if rows.ndim else rows.reshape(1, 0)
      out = np.asarray([self.decode(r).encode('utf-8') for r in flat], object)
      return out.reshape(rows.shape[:-1])

    out = tf.numpy_function(texts, [ids], tf.string, stateful=False)
    out.set_shape(ids.shape[:-1])
    return out

  @functools.cached_property
  def sp_model(self) -> bytes:
    """What the frozen-model fingerprint hashes: the tokenizer (canonical JSON, or the SentencePiece model) and the
    resolved special ids."""
    record = dict(self._special.record(), adds_bos=self._adds_bos, adds_eos=self._adds_eos)
    return self._tokenizer.serialized() + b'|' + json.dumps(record, sort_keys=True).encode()

  def __eq__(self, other: object) -> bool:
    if not isinstance(other, HfVocabulary):
      return NotImplemented
    return self._folder == other._folder

  def __hash__(self) -> int:
    return hash((type(self).__name__, self._folder))

  def __reduce__(self) -> tuple[Any, tuple[str]]:
    return type(self), (self._folder,)

  def __deepcopy__(self, memo: dict[int, Any]) -> HfVocabulary:
    return self  # immutable (gin deep-copies configurable arguments)

  def __repr__(self) -> str:
    return f'HfVocabulary(folder={self._folder}, vocab_size={self.vocab_size}, bos={self.bos_id}, eos={self.eos_id})'
