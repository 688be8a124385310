"""T5's SentencePiece vocabulary: the copy shipped in `jaxprompt/assets`, or any local / gs:// model file.

T5 (and every T5 1.1 / LM-adapted checkpoint) uses the `cc_all.32000` SentencePiece model: 32000 pieces with
pad=0, eos=1, unk=2; seqio appends 100 sentinel ids (`<extra_id_0>` = 32099 ... `<extra_id_99>` = 32000), so
`vocab_size` is 32100 (models pad their embedding table to 32128). The vocabularies here number pieces as seqio
does without loading TensorFlow (`sentencepiece_vocab`); seqio tasks accept them as they are. A folder (a Hugging
Face model or tokenizer folder: tokenizer.json or tokenizer.model) loads as `hf_vocab.HfVocabulary`, a causal LM's.
"""
from __future__ import annotations

import functools
import importlib.resources
import os
import sys
from typing import Any

from jaxprompt.data.hf_vocab import HfVocabulary
from jaxprompt.data.sentencepiece_vocab import SentencePieceVocabulary
from jaxprompt.errors import DataError
from jaxprompt.formats import files

DEFAULT_VOCAB_FILENAME = 't5_cc_all_32000_sentencepiece.model'
DEFAULT_EXTRA_IDS = 100


def default_vocabulary_path() -> str:
  """Filesystem path of the SentencePiece model shipped in the package."""
  resource = importlib.resources.files('jaxprompt') / 'assets' / DEFAULT_VOCAB_FILENAME
  if not resource.is_file():
    raise DataError(f'the packaged vocabulary {resource} is missing: reinstall jaxprompt')
  # pip/setuptools install packages as plain directories, so the resource is a real file that
  # SentencePiece can open by name.
  return str(resource)


def _load(path: str, extra_ids: int) -> SentencePieceVocabulary:
  try:
    return SentencePieceVocabulary(path, extra_ids=extra_ids)  # loads the model now, not mid-training
  except Exception as e:  # pylint: disable=broad-except  (sentencepiece / protobuf / gfile raise assorted types)
    raise DataError(f'cannot read SentencePiece model {path}: {type(e).__name__}: {e}') from e


@functools.cache
def _cached_default(extra_ids: int) -> SentencePieceVocabulary:
  return _load(default_vocabulary_path(), extra_ids)


def get_default_vocabulary(extra_ids: int = DEFAULT_EXTRA_IDS) -> SentencePieceVocabulary:
  """T5's `cc_all.32000` vocabulary plus `extra_ids` sentinels (vocab_size 32100 with the default 100)."""
  return _cached_default(int(extra_ids))  # one object per extra_ids, however it is passed


def get_vocabulary(path: str | None = None,
                   extra_ids: int = DEFAULT_EXTRA_IDS) -> SentencePieceVocabulary | HfVocabulary:
  """A SentencePiece vocabulary from `path` (local file or gs://...), the default one when None, or a Hugging Face
  tokenizer when `path` is a folder (`extra_ids` does not apply: the tokenizer has its own ids).

  Raises:
    DataError: the file does not exist or is not a SentencePiece model, or the folder holds no usable tokenizer
      (the message names the file).
  """
  if path is None:
    return get_default_vocabulary(extra_ids)
  path = str(path)
  if '://' not in path and not os.path.exists(path):
    raise DataError(f'vocabulary file {path} does not exist')
  if files.isdir(path):
    return HfVocabulary(path)
  return _load(path, extra_ids)


def is_vocabulary(value: Any) -> bool:
  """A vocabulary object: this module's, or any seqio vocabulary (checked without importing seqio)."""
  seqio = sys.modules.get('seqio')
  return isinstance(value, (SentencePieceVocabulary, HfVocabulary)) or (seqio is not None and
                                                                        isinstance(value, seqio.Vocabulary))


def resolve(vocabulary: Any, extra_ids: int = DEFAULT_EXTRA_IDS) -> Any:
  """A vocabulary object as it is; a SentencePiece path loaded; None: T5's default."""
  if vocabulary is None or is_vocabulary(vocabulary):
    return vocabulary if vocabulary is not None else get_default_vocabulary(extra_ids)
  if isinstance(vocabulary, (str, os.PathLike)):
    return get_vocabulary(os.fspath(vocabulary), extra_ids)
  raise DataError(f'a vocabulary must be a SentencePiece model path, a Hugging Face tokenizer folder or a vocabulary '
                  f'object, got {vocabulary!r}')
