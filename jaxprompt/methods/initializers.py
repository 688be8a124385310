"""Soft-prompt initialisers.

Every public function here is a factory (gin-configurable under module `jaxprompt.methods`) returning

  init(rng, shape, embedding) -> [length, embed] float32

where `shape` is `(length, embed)` and `embedding` is the frozen model's token table `[vocab, embed]`
(`params['token_embedder']['embedding']`, any float dtype) or None for initialisers that do not need it.
Gin calls a factory when written with parentheses, so configs bind the *result*:

  Trainer.prompt_init = @jaxprompt.methods.class_labels()
  jaxprompt.methods.class_labels.labels = ['False', 'True']

Scoped copies work as usual (`@prompt_init/jaxprompt.methods.sampled_vocab()`). `bind_embedding` adapts an
initialiser to Flax's `(key, shape, dtype)` signature, e.g. for `Prompt(prompt_init=...)`.
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import gin
import jax
import jax.numpy as jnp
import numpy as np

from jaxprompt.errors import PromptError
from jaxprompt.formats import npy_io

GIN_MODULE = 'jaxprompt.methods'
Array = jax.Array
Initializer = Callable[[Array, Sequence[int], Any], Array]


class Vocabulary(Protocol):
  """What the text-based initialisers need from a vocabulary (seqio's vocabularies qualify)."""

  def encode(self, s: str) -> Sequence[int]:
    ...


# ----- shared checks -----


def _check_shape(shape: Sequence[int], who: str) -> tuple[int, int]:
  """Validates a prompt shape: two positive ints `(length, embed)`."""
  shape = tuple(shape)
  if len(shape) != 2 or any(not isinstance(d, (int, np.integer)) or d <= 0 for d in shape):
    raise PromptError(f'{who}: prompt shape must be (length, embed) with positive sizes, got {shape}')
  return int(shape[0]), int(shape[1])


def _table(embedding: Any, embed: int, who: str) -> Array:
  """The token embedding table `[vocab, embed]` as a jax array (its dtype kept), checked against `embed`."""
  if embedding is None:
    raise PromptError(f'{who} needs the model\'s token embedding table [vocab, embed] '
                      f'(params["token_embedder"]["embedding"]), got None')
  table = jnp.asarray(embedding)
  if table.ndim != 2 or not jnp.issubdtype(table.dtype, jnp.floating):
    raise PromptError(f'{who}: the token embedding table must be a 2-D float array [vocab, embed], got shape '
                      f'{tuple(table.shape)} dtype {table.dtype}')
  if table.shape[1] != embed:
    raise PromptError(f'{who}: the token embedding table has embed size {table.shape[1]} (shape '
                      f'{tuple(table.shape)}) but the prompt shape asks for embed size {embed}')
  return table


def _rows(table: Array, ids: Sequence[int]) -> Array:
  """Rows of the table as float32. [len(ids), embed]."""
  return jnp.take(table, jnp.asarray(ids, jnp.int32), axis=0).astype(jnp.float32)


def _resolve_vocabulary(vocabulary: Any) -> Vocabulary:
  """None -> T5's default vocabulary; a str / path -> that SentencePiece model; else anything with `.encode`."""
  if vocabulary is None or isinstance(vocabulary, (str, os.PathLike)):
    from jaxprompt.data import vocab  # pylint: disable=g-import-not-at-top
    return vocab.get_vocabulary(None if vocabulary is None else str(vocabulary))
  if not callable(getattr(vocabulary, 'encode', None)):
    raise PromptError(f'vocabulary must be None, a SentencePiece model path or an object with .encode(str), '
                      f'got {type(vocabulary).__name__}')
  return vocabulary


def _encode(encode: Callable[[str], Sequence[int]], text: str, num_rows: int, who: str) -> list[int]:
  """Token ids of `text` by `encode` (a vocabulary's), each checked to index a row of the embedding table."""
  ids = [int(i) for i in encode(text)]
  if not ids:
    raise PromptError(f'{who}: {text!r} tokenizes to no pieces')
  bad = [i for i in ids if not 0 <= i < num_rows]
  if bad:
    raise PromptError(f'{who}: {text!r} tokenizes to ids {bad} outside the embedding table of {num_rows} rows '
                      f'(wrong vocabulary for this model?)')
  return ids


def _as_prompt(array: Any, shape: tuple[int, int], source: str) -> Array:
  """Checks a ready-made prompt (dtype, shape, finiteness) and returns it as float32. [length, embed]."""
  dtype = np.dtype(array.dtype)
  if dtype.kind == 'V' and dtype.itemsize == 2 and dtype.names is None:
    # np.save of an ml_dtypes/jax bfloat16 array writes the anonymous void type '<V2'.
    array = np.asarray(array).view(jnp.bfloat16)
  elif not jnp.issubdtype(dtype, jnp.floating):
    raise PromptError(f'{source} has dtype {dtype}; a prompt must be a float array (float16/bfloat16/float32/'
                      f'float64)')
  if tuple(array.shape) != shape:
    raise PromptError(f'{source} has shape {tuple(array.shape)} but the prompt shape is {shape} (length, embed)')
  prompt = np.asarray(array, np.float32)
  if not np.isfinite(prompt).all():
    raise PromptError(f'{source} contains {int((~np.isfinite(prompt)).sum())} non-finite values (NaN/inf)')
  return jnp.asarray(prompt)


# ----- random initialisers -----


@gin.configurable(module=GIN_MODULE)
def random_uniform(scale: float = 0.5) -> Initializer:
  """U(-scale, scale) per entry: the paper's random initialisation (scale 0.5)."""
  if not scale > 0:
    raise PromptError(f'random_uniform: scale must be positive, got {scale}')

  def init(rng: Array, shape: Sequence[int], embedding: Any = None) -> Array:
    del embedding
    return jax.random.uniform(rng, _check_shape(shape, 'random_uniform'), jnp.float32, -scale, scale)

  return init


@gin.configurable(module=GIN_MODULE)
def normal(stddev: float = 1.0, truncated: bool = False) -> Initializer:
  """N(0, stddev^2) per entry; `truncated` redraws values beyond 2 stddev (the spread is then ~0.88 stddev)."""
  if not stddev > 0:
    raise PromptError(f'normal: stddev must be positive, got {stddev}')

  def init(rng: Array, shape: Sequence[int], embedding: Any = None) -> Array:
    del embedding
    shape = _check_shape(shape, 'normal')
    if truncated:
      return stddev * jax.random.truncated_normal(rng, -2.0, 2.0, shape, jnp.float32)
    return stddev * jax.random.normal(rng, shape, jnp.float32)

  return init


# ----- initialisers drawing on the embedding table -----


def _sampled_vocab(population_size: int = 5000, start: int = 0) -> Initializer:
  """Rows of the embedding table for random ids in [start, start + population_size).

  T5's SentencePiece ids are ordered by frequency, so the default draws among the 5000 commonest pieces
  (Lester et al.). Ids are distinct when the prompt is no longer than the population, else drawn with
  replacement. The population is clipped to the table. With start=0 the draw equals prompt-tuning's
  `from_sample_of_embeddings` for the same rng.
  """
  if population_size <= 0:
    raise PromptError(f'sampled_vocab: population_size must be positive, got {population_size}')
  if start < 0:
    raise PromptError(f'sampled_vocab: start must be >= 0, got {start}')

  def init(rng: Array, shape: Sequence[int], embedding: Any) -> Array:
    length, embed = _check_shape(shape, 'sampled_vocab')
    table = _table(embedding, embed, 'sampled_vocab')
    if start >= table.shape[0]:
      raise PromptError(f'sampled_vocab: start {start} is past the embedding table of {table.shape[0]} rows')
    population = min(population_size, table.shape[0] - start)
    ids = jax.random.choice(rng, population, (length,), replace=length > population)
    return _rows(table, ids + start)

  return init


sampled_vocab = gin.external_configurable(_sampled_vocab, 'sampled_vocab', module=GIN_MODULE)
# Aliases: the brief's name and google-research/prompt-tuning's spelling.
from_samples_of_embeddings = gin.external_configurable(_sampled_vocab, 'from_samples_of_embeddings', module=GIN_MODULE)
from_sample_of_embeddings = gin.external_configurable(_sampled_vocab, 'from_sample_of_embeddings', module=GIN_MODULE)


@gin.configurable(module=GIN_MODULE)
def class_labels(labels: Sequence[str] = gin.REQUIRED, vocabulary: Any = None,
                 fallback: Initializer | None = None) -> Initializer:
  """Class-label initialisation (Lester et al.): row i is the embedding of `labels[i]`.

  A label split into several pieces gets the mean of their embeddings. The other rows come from `fallback`,
  called with the same rng on the whole shape (its first rows are then overwritten), as in prompt-tuning's
  `from_embedded_list`; labels beyond the prompt length are skipped with a warning, as there. The default
  fallback, `sampled_vocab(5000)`, is what prompt-tuning's
  `configs/prompts/from_class_labels.gin` uses.

  Args:
    labels: the verbalizer strings, e.g. ['False', 'True'].
    vocabulary: None (T5's default SentencePiece vocabulary), a SentencePiece model path, or any object
      with `.encode(str) -> list[int]`; must be the frozen model's vocabulary.
    fallback: initialiser for the remaining rows.
  """
  if isinstance(labels, str) or not isinstance(labels, Sequence) or not labels:
    raise PromptError(f'class_labels: labels must be a non-empty list of strings, got {labels!r}')
  for label in labels:
    if not isinstance(label, str):
      raise PromptError(f'class_labels: label {label!r} is a {type(label).__name__}, not a string')
  labels = tuple(labels)
  fallback = sampled_vocab(5000) if fallback is None else fallback

  def init(rng: Array, shape: Sequence[int], embedding: Any) -> Array:
    length, embed = _check_shape(shape, 'class_labels')
    used = labels[:length]
    if len(labels) > length:  # as prompt-tuning's from_embedded_list: keep the first `length` labels
      logging.warning(
          'class_labels: %d labels do not fit in a prompt of length %d; initialising from %s and '
          'skipping %s', len(labels), length, list(used), list(labels[length:]))
    table = _table(embedding, embed, 'class_labels')
    vocab = _resolve_vocabulary(vocabulary)
    label_rows = jnp.stack([
        jnp.mean(_rows(table, _encode(vocab.encode, label, table.shape[0], 'class_labels')), axis=0) for label in used
    ])
    prompt = jnp.asarray(fallback(rng, (length, embed), embedding), jnp.float32)
    if prompt.shape != (length, embed):
      raise PromptError(f'class_labels: the fallback initialiser returned shape {tuple(prompt.shape)}, '
                        f'expected {(length, embed)}')
    return prompt.at[:len(used)].set(label_rows)

  return init


@gin.configurable(module=GIN_MODULE)
def from_text(text: str = gin.REQUIRED, vocabulary: Any = None, add_eos: bool = False,
              specials: bool = False) -> Initializer:
  """Embeddings of the pieces of `text`, cycled (or cut) to the prompt length (HF PEFT's TEXT init).

  PEFT repeats the ids of `tokenizer(text)` ceil(length / n) times and keeps the first `length`. That call adds the
  tokenizer's special tokens, which seqio's `encode` does not: a Hugging Face T5 tokenizer appends `</s>`
  (`add_eos=True` reproduces PEFT on T5 exactly), a Llama tokenizer puts BOS in front (`specials=True`: the ids a
  Hugging Face tokenizer folder's vocabulary gives with its specials, `encode_with_specials`, PEFT's on a causal
  LM). `vocabulary` is as in `class_labels`.
  """
  if not isinstance(text, str) or not text.strip():
    raise PromptError(f'from_text: text must be a non-empty string, got {text!r}')

  def init(rng: Array, shape: Sequence[int], embedding: Any) -> Array:
    del rng
    length, embed = _check_shape(shape, 'from_text')
    table = _table(embedding, embed, 'from_text')
    vocab = _resolve_vocabulary(vocabulary)
    encode = getattr(vocab, 'encode_with_specials', None) if specials else vocab.encode
    if not callable(encode):
      raise PromptError(f'from_text: specials=True needs a Hugging Face tokenizer vocabulary (encode_with_specials); '
                        f'{type(vocab).__name__} has none (for T5, add_eos=True is what its tokenizer adds)')
    ids = _encode(encode, text, table.shape[0], 'from_text')
    if add_eos:
      eos_id = getattr(vocab, 'eos_id', None)
      if eos_id is None:
        raise PromptError(f'from_text: add_eos=True but the vocabulary {type(vocab).__name__} has no eos_id')
      ids.append(int(eos_id))
    ids = (ids * math.ceil(length / len(ids)))[:length]
    return _rows(table, ids)

  return init


# ----- ready-made prompts (SPoT transfer, released prompts, PEFT adapters) -----


@gin.configurable(module=GIN_MODULE)
def from_array(array: Any = gin.REQUIRED) -> Initializer:
  """Returns a given `[length, embed]` float array (cast to float32); its shape must match the prompt's."""

  def init(rng: Array, shape: Sequence[int], embedding: Any = None) -> Array:
    del rng, embedding
    return _as_prompt(array, _check_shape(shape, 'from_array'), 'from_array: the array')

  return init


@gin.configurable(module=GIN_MODULE)
def from_file(path: str | os.PathLike | Sequence[str | os.PathLike] = gin.REQUIRED) -> Initializer:
  """A saved prompt: a `.npy` (np.save) or a PEFT PROMPT_TUNING / P_TUNING adapter folder (a released prompt,
  or another task's prompt for SPoT transfer).

  Several paths (a list or tuple) give their elementwise mean, SPoT-style transfer (Vu et al. 2022) from several
  source tasks at once: `from_file.path = ['/a/final_prompt.npy', '/b/final_prompt.npy']`. Files are read when
  the initialiser runs (local or gs:// via tf.io.gfile); pickled data is never loaded. Each file's shape must
  equal the prompt's (the error names the odd file); float16/bfloat16/float64 are cast to float32 and averaged in
  float32.
  """
  paths = _paths(path)

  def init(rng: Array, shape: Sequence[int], embedding: Any = None) -> Array:
    del rng, embedding
    shape = _check_shape(shape, 'from_file')
    prompts = []
    for i, one in enumerate(paths):
      where = f'prompt file {one}' + (f' ({i + 1} of {len(paths)} averaged)' if len(paths) > 1 else '')
      prompts.append(_as_prompt(_read_saved_prompt(one), shape, where))
    return prompts[0] if len(prompts) == 1 else jnp.mean(jnp.stack(prompts), axis=0)

  return init


def _paths(path: Any) -> tuple[str, ...]:
  """One path, or a non-empty list / tuple of them, as strings."""
  many = isinstance(path, (list, tuple))
  paths = tuple(path) if many else (path,)
  if not paths:
    raise PromptError('from_file: path is an empty list; give a prompt file or several to average (SPoT)')
  bad = [p for p in paths if not isinstance(p, (str, os.PathLike))]
  if bad:
    raise PromptError(f'from_file: path must be a file path or a list of them; got {bad[0]!r} '
                      f'({type(bad[0]).__name__})')
  return tuple(os.fspath(p) for p in paths)


def _read_saved_prompt(path: str) -> Any:
  """The array of a prompt .npy, or the prompt of a PEFT adapter folder (its first num_virtual_tokens rows)."""
  from jaxprompt.methods import peft_adapters  # pylint: disable=g-import-not-at-top  (keeps this import light)
  if not peft_adapters.is_adapter_dir(path):
    return npy_io.read_npy(path, what='prompt file', error=PromptError)
  adapter = peft_adapters.read_adapter(path)
  if adapter.kind != 'prompt':
    raise PromptError(f'prompt file {path} is a PEFT {adapter.config.get("peft_type")} adapter: key/value prefixes, '
                      f'not an input prompt; from_file takes PROMPT_TUNING or P_TUNING adapters')
  return adapter.arrays['prompt']


def bind_embedding(init: Initializer, embedding: Any) -> Callable[..., Array]:
  """Adapts `init` to Flax's initializer signature `(key, shape, dtype=float32)` with `embedding` fixed."""

  def param_init(rng: Array, shape: Sequence[int], dtype: Any = jnp.float32) -> Array:
    return jnp.asarray(init(rng, tuple(shape), embedding), dtype)

  return param_init
