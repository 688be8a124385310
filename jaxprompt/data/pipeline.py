"""seqio tasks -> numpy batches of a model family's features (unpacked, or packed with prompt slots), per host.

The family (`family=`, a model config's `family` string; default 'encoder_decoder', T5's `EncDecFeatureConverter`
features) picks the features through `data/converters.py`: 'decoder_only' gives the causal-LM stream features of
`data/causal.py`. Nothing else here depends on it.

Training reads an endless, seeded, shuffled stream sharded over processes (`seqio.ShardInfo`), so the k-th
batch is the same in every run with the same seed and process count: resuming skips the batches already
consumed (`data_position`) and sees exactly what an uninterrupted run would have seen. A multi-task method's
stream mixes the mixture's tasks at its rates and tags every example with its task's id (`mixed_task_stream`).

Evaluation and inference read a split once, in order, on every process (each process then feeds its own rows
of every global batch to the mesh).
"""
from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from jaxprompt.data import causal, converters, custom, text_tasks, truncation
from jaxprompt.errors import ConfigError, DataError
from jaxprompt.models.features import FLOAT_FEATURES, PROMPT_SLOT_ID, TASK_FEATURE  # noqa: F401

if TYPE_CHECKING:  # loaded by the functions that read a task: features of raw text need no TensorFlow
  import seqio
  import tensorflow as tf

Batch = dict[str, np.ndarray]

# ------------------------------------------------------------------------------------ tasks


def get_provider(name: Any, vocabulary: Any = None, family: str = converters.DEFAULT, *,
                 streams: bool = True) -> seqio.Task | seqio.Mixture | text_tasks.TextTask:
  """A registered Task or Mixture (GLUE / SuperGLUE, user file tasks, anything a gin `import` registered).

  `vocabulary` (the model's, `ModelSource.vocabulary`; None: the task's own): the task reads with it, its inputs
  ending in EOS as `family` wants (`data/retokenized.py`: a causal LM reads GLUE with its own tokenizer). A text
  task (jaxprompt's own: file and demo tasks) comes as itself when not `streams` (eval / infer read a split once,
  without TensorFlow or seqio), else as its seqio Task (training's tf.data stream)."""
  text = text_tasks.lookup(name)
  if text is not None and not streams:
    return text if vocabulary is None else text.retokenized(vocabulary, converters.get(family).inputs_eos)
  import seqio  # pylint: disable=g-import-not-at-top

  from jaxprompt.data import tasks as tasks_lib  # pylint: disable=g-import-not-at-top
  if isinstance(name, (seqio.Task, seqio.Mixture)):
    provider = name
  elif isinstance(name, text_tasks.TextTask):
    provider = name.as_seqio()
  elif not isinstance(name, str) or not name:
    raise ConfigError(f'MIXTURE_OR_TASK_NAME must be a task or mixture name, got {name!r}')
  else:
    provider = tasks_lib.get_task(name)
  if vocabulary is None:
    return provider
  from jaxprompt.data.retokenized import retokenized  # pylint: disable=g-import-not-at-top
  return retokenized(provider, vocabulary, converters.get(family).inputs_eos)


def label_set(name: str) -> list[str] | None:
  """Class labels of a task (file tasks and GLUE / SuperGLUE), None for free-text targets."""
  text = text_tasks.lookup(name)
  if text is not None:
    labels = text.labels
  else:
    from jaxprompt.data import tasks as tasks_lib  # pylint: disable=g-import-not-at-top
    labels = tasks_lib.get_label_set(name)
  return None if labels is None else list(labels)


def subtasks(provider: seqio.Task | seqio.Mixture, split: str) -> list[seqio.Task]:
  """The tasks to evaluate: the task itself, or each task of a mixture that has `split`."""
  seqio = sys.modules.get('seqio')  # not loaded: not a mixture
  tasks = list(provider.tasks) if seqio is not None and isinstance(provider, seqio.Mixture) else [provider]
  with_split = [t for t in tasks if split in t.splits]
  if not with_split:
    available = sorted({s for t in tasks for s in t.splits})
    raise DataError(f'task {provider.name!r} has no split {split!r}; available splits: {available}')
  return with_split


def targets_vocabulary(provider: seqio.Task | seqio.Mixture) -> seqio.Vocabulary:
  features = provider.output_features
  if 'targets' not in features:
    raise DataError(f'task {provider.name!r} has no `targets` feature (an encoder-decoder task needs '
                    f'inputs and targets; it has {sorted(features)})')
  return features['targets'].vocabulary


def inputs_vocabulary(provider: seqio.Task | seqio.Mixture) -> seqio.Vocabulary:
  features = provider.output_features
  return features['inputs'].vocabulary if 'inputs' in features else targets_vocabulary(provider)


def task_vocabulary(provider: seqio.Task | seqio.Mixture) -> seqio.Vocabulary:
  """The vocabulary a task's labels and texts are read with: its targets' (rank classification, decoding), else its
  inputs' (an encoder-only label task has no targets)."""
  return targets_vocabulary(provider) if 'targets' in provider.output_features else inputs_vocabulary(provider)


def check_split(provider: seqio.Task | seqio.Mixture, split: str) -> None:
  """DataError naming the task and split if the split is missing or yields no example."""
  from jaxprompt.data import tasks as tasks_lib  # pylint: disable=g-import-not-at-top
  tasks_lib.check_nonempty(provider, split)


# ------------------------------------------------------------------------------------ training stream


def host_batch_size(global_batch_size: int, data_parallel: int) -> int:
  """Rows this process feeds per step: BATCH_SIZE / process_count (checked against the mesh)."""
  processes = jax.process_count()
  if global_batch_size % processes or global_batch_size % data_parallel:
    raise ConfigError(f'BATCH_SIZE={global_batch_size} must be divisible by the number of processes '
                      f'({processes}) and by the data-parallel mesh size ({data_parallel})')
  return global_batch_size // processes


def stream_tokens(provider: seqio.Task | seqio.Mixture, family: str = converters.DEFAULT,
                  count: truncation.StreamCount | None = None) -> Any:
  """The special ids the family's features of `provider`'s examples need (`Family.tokens_of`): a causal stream's
  BOS and the inputs EOS to drop; the encoder family's specials layout (and `count`, the stream's, it counts)."""
  vocabulary = task_vocabulary(provider)
  return converters.get(family).tokens_of(vocabulary, eos_features(provider).get('inputs', False), count)


def convert_features(ds: tf.data.Dataset, feature_lengths: Mapping[str, int], pack: bool = False, prompt_slots: int = 0,
                     family: str = converters.DEFAULT, tokens: causal.StreamTokens | None = None) -> tf.data.Dataset:
  """Tokenized examples {'inputs', 'targets'} -> the family's model features (unbatched; `converters.get(family)`).

  Unpacked: rows of the feature lengths (a causal row: inputs + targets); a prompt method inserts its rows itself.
  Packed (seqio's packing, several examples per row with segment ids): each example first gets `prompt_slots`
  placeholder positions in front (of its inputs for T5, of its stream for a causal LM), filled by the method with
  its own copy of the prompt, so rows are `prompt_slots` wider (a full-length example still fits, as unpacked).
  `tokens`: a causal stream's BOS and inputs EOS (`stream_tokens`).
  """
  return converters.get(family).convert(ds, feature_lengths, pack, prompt_slots, tokens, None)


def train_dataset(provider: seqio.Task | seqio.Mixture, feature_lengths: Mapping[str, int], split: str, host_batch: int,
                  seed: int, pack: bool = False, prompt_slots: int = 0, task_names: Sequence[str] = (),
                  count: truncation.StreamCount | None = None, family: str = converters.DEFAULT) -> tf.data.Dataset:
  """Endless batches [host_batch, length] of this process's shard, shuffled with `seed`; packed when `pack`
  (with `prompt_slots` reserved in front of each example for the method's prompt; see `convert_features`).
  `task_names` (a multi-task method's): every row carries `task_ids` [host_batch] int32, its task's index
  there (`mixed_task_stream`); never packed. `count` (`training_count`) counts each example longer than the
  lengths before cutting it (the same rows either way). `family`: whose features (`convert_features`)."""
  import seqio  # pylint: disable=g-import-not-at-top
  shard = seqio.ShardInfo(index=jax.process_index(), num_shards=jax.process_count())
  if task_names:
    if pack:
      raise ConfigError(f'multi-task training gives each example its own task\'s prompt, and a packed row holds '
                        f'examples of several tasks: set PACK=False (tasks {list(task_names)})')
    own = converters.get(family).counts_rows  # the converter counts the rows it cuts
    ds = mixed_task_stream(provider, feature_lengths, split, seed, task_names, shard, None if own else count)
    ds = convert_with_task_ids(ds, feature_lengths, family, stream_tokens(provider, family, count if own else None))
  else:
    ds = provider.get_dataset(sequence_length=_seqio_lengths(feature_lengths, count), split=split, use_cached=False,
                              shuffle=True, seed=seed, num_epochs=None, shard_info=shard)
    if converters.get(family).counts_rows:  # the converter counts the rows it cuts
      ds = convert_features(ds, feature_lengths, pack, prompt_slots, family, stream_tokens(provider, family, count))
    else:
      ds = convert_features(ds if count is None else count.cut(ds), feature_lengths, pack, prompt_slots, family,
                            stream_tokens(provider, family))
  return ds.batch(host_batch, drop_remainder=True)


def _seqio_lengths(feature_lengths: Mapping[str, int], count: truncation.StreamCount | None) -> dict[str, int] | None:
  """What a stream asks seqio for: examples cut to the lengths, or whole ones when `count` measures and cuts them."""
  return dict(feature_lengths) if count is None else None


def training_count(provider: seqio.Task | seqio.Mixture, feature_lengths: Mapping[str, int],
                   split: str) -> truncation.StreamCount | None:
  """The training split's truncation: a file task's is counted now over the whole split (its texts are in
  memory) and reported at once (None returned); any other's is a `StreamCount` for `train_dataset`."""
  where = f'task {provider.name!r} split {split!r}'
  if custom.is_file_task(provider.name):  # a file task (as itself or its seqio Task), never a mixture's name
    truncation.Truncation.count(where, feature_lengths, custom.token_lengths(provider.name, split)).report()
    return None
  return truncation.StreamCount(where, feature_lengths, eos_features(provider))


def eos_features(provider: seqio.Task | seqio.Mixture) -> dict[str, bool]:
  """{feature: whether seqio appends an EOS to it} of the task's output features."""
  return {k: bool(f.add_eos) for k, f in provider.output_features.items()}


def mixed_task_stream(provider: seqio.Task | seqio.Mixture, feature_lengths: Mapping[str, int], split: str, seed: int,
                      task_names: Sequence[str], shard: seqio.ShardInfo | None = None,
                      count: truncation.StreamCount | None = None) -> tf.data.Dataset:
  """The endless mixture of `provider`'s tasks, each example with its task's index in `task_names` as
  `task_ids` [1] int32 (a single Task: its own index).

  seqio's `Mixture.get_dataset` cannot tag an example with its task, so this repeats its mixing with the tag
  added before it: each task's stream filtered to the mixture's output features, as seqio reads it (same
  seed, shard and epochs), then `tf.data.Dataset.sample_from_datasets` with the rates `mixture.get_rate(task)`,
  `seed` and `stop_on_empty_dataset=True`, seqio's default sample_fn. Without `task_ids` the stream is
  `mixture.get_dataset(..., seed=seed)`'s, so the k-th batch is fixed by the seed (resume skips exactly).
  Tasks without `split` are left out, as seqio does. `count`: as in `train_dataset`.
  """
  import seqio  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tasks = list(provider.tasks) if isinstance(provider, seqio.Mixture) else [provider]
  names = list(task_names)
  unknown = [t.name for t in tasks if t.name not in names]
  if unknown:
    raise ConfigError(f'{provider.name!r} has tasks {unknown} that the multi-task method does not know; its '
                      f'tasks are {names} (set its `tasks` to this mixture, or to a list naming every task)')
  tasks = [t for t in tasks if split in t.splits]
  if not tasks:
    raise DataError(f'no task of {provider.name!r} has a split {split!r}')
  rates = [float(provider.get_rate(t)) if isinstance(provider, seqio.Mixture) else 1.0 for t in tasks]
  if not sum(rates) > 0:
    raise ConfigError(f'mixture {provider.name!r} gives its tasks with split {split!r} the rates '
                      f'{dict(zip([t.name for t in tasks], rates))}: at least one must be positive')
  keys = set(provider.output_features)
  streams = []
  for task in tasks:
    ds = task.get_dataset(sequence_length=_seqio_lengths(feature_lengths, count), split=split, use_cached=False,
                          shuffle=True, seed=seed, num_epochs=None, shard_info=shard)
    tag = tf.constant([names.index(task.name)], tf.int32)
    streams.append(
        ds.map(lambda ex, tag=tag: {**{k: v for k, v in ex.items() if k in keys}, TASK_FEATURE: tag},
               num_parallel_calls=tf.data.AUTOTUNE))
  ds = tf.data.Dataset.sample_from_datasets(streams, weights=rates, seed=seed, stop_on_empty_dataset=True)
  return ds if count is None else count.cut(ds)


def convert_with_task_ids(ds: tf.data.Dataset, feature_lengths: Mapping[str, int], family: str = converters.DEFAULT,
                          tokens: causal.StreamTokens | None = None) -> tf.data.Dataset:
  """Unpacked features of the family plus `task_ids` (an int32 scalar per example). seqio passes the id through
  as a length-1 feature (its trim-and-pad step needs rank >= 1); it is a scalar again after."""
  import seqio  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  spec = seqio.FeatureConverter.FeatureSpec(dtype=tf.int32, rank=1)
  ds = converters.get(family).convert(ds, {**feature_lengths, TASK_FEATURE: 1}, False, 0, tokens, {TASK_FEATURE: spec})
  return ds.map(lambda ex: {**ex, TASK_FEATURE: ex[TASK_FEATURE][0]}, num_parallel_calls=tf.data.AUTOTUNE)


def batch_stats(batch: Mapping[str, np.ndarray]) -> dict[str, float]:
  """How full a batch is: examples it holds (packed rows hold several) and, as `encoder_fill`, the fraction of
  the positions the model reads (the encoder's; a causal LM's stream) that hold a token (or a reserved prompt slot)
  rather than padding. A causal batch says which by `decoder_input_mask` (id 0 is a real token there), an
  encoder-only one by `encoder_input_mask` (RoBERTa pads with id 1; a multiple-choice row is [choices, length])."""
  if 'decoder_input_mask' in batch:
    real, segments = np.asarray(batch['decoder_input_mask']) != 0, batch.get('decoder_segment_ids')
  elif 'encoder_input_mask' in batch:
    real, segments = np.asarray(batch['encoder_input_mask']) != 0, None
  else:
    real, segments = np.asarray(batch['encoder_input_tokens']) != 0, batch.get('encoder_segment_ids')
  if segments is not None:
    examples = int(np.asarray(segments).max(axis=1).sum())
  else:
    examples = int(np.any(real.reshape(real.shape[0], -1), axis=1).sum()) if real.size else 0
  return {'examples': float(examples), 'encoder_fill': float(np.mean(real)) if real.size else 0.0}


def as_float_weights(batch: Mapping[str, np.ndarray], family: str = converters.DEFAULT) -> Batch:
  """The family's features of a batch, loss weights as float32 (seqio gives int32): one compiled step for real
  batches and tests' NaN-poisoned ones."""
  keys = converters.get(family).batch_keys + (TASK_FEATURE,)
  out = {k: np.asarray(batch[k]) for k in keys if k in batch}
  out.update({k: out[k].astype(np.float32) for k in FLOAT_FEATURES if k in out})
  return out


def train_batches(ds: tf.data.Dataset, skip: int = 0, family: str = converters.DEFAULT) -> Iterator[Batch]:
  """Numpy batches after skipping the first `skip` (already consumed before a resume)."""
  if skip:
    ds = ds.skip(skip)  # skipped inside tf.data (C++), still deterministic
  for batch in ds.prefetch(2).as_numpy_iterator():
    yield as_float_weights(batch, family)


# ------------------------------------------------------------------------------------ one pass over a split


def read_examples(
    task: seqio.Task, feature_lengths: Mapping[str, int] | None, split: str, max_examples: int | None = None,
    counted: Sequence[str] = truncation.GROUPS) -> tuple[list[dict[str, Any]], truncation.Truncation | None]:
  """Every preprocessed example of a split, in order (EOS appended), and how many were longer than the lengths.

  Examples are read whole, the `counted` features measured, then every feature cut to its length as seqio would
  (`truncation.cut`); the count is reported once (a log line when any was cut). Without lengths nothing is cut
  or counted (None).
  """
  if isinstance(task, text_tasks.TextTask):  # the same examples without TensorFlow
    examples = task.examples(split, max_examples)
  else:
    examples = _seqio_examples(task, split, max_examples)
  if not examples:
    raise DataError(f'task {task.name!r} split {split!r} is empty: no example left after preprocessing')
  if not feature_lengths:
    return examples, None
  sizes = {k: [len(ex[k]) for ex in examples] for k in counted if k in feature_lengths and k in examples[0]}
  found = truncation.Truncation.count(f'task {task.name!r} split {split!r}', feature_lengths, sizes).report()
  eos = eos_features(task)
  for ex in examples:
    ex.update({k: truncation.cut(ex[k], n, eos.get(k, False)) for k, n in feature_lengths.items() if k in ex})
  return examples, found


def _seqio_examples(task: seqio.Task, split: str, max_examples: int | None) -> list[dict[str, Any]]:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    ds = task.get_dataset(sequence_length=None, split=split, use_cached=False, shuffle=False, num_epochs=1)
    if max_examples:
      ds = ds.take(max_examples)
    return list(ds.as_numpy_iterator())
  except (tf.errors.OpError, ValueError) as e:
    raise DataError(f'task {task.name!r} split {split!r}: cannot read examples ({type(e).__name__}: '
                    f'{str(e).splitlines()[0] if str(e) else ""})') from e


def to_features(inputs: Sequence[np.ndarray], targets: Sequence[np.ndarray] | None, feature_lengths: Mapping[str, int],
                family: str = converters.DEFAULT, tokens: causal.StreamTokens | None = None) -> Batch:
  """Unpacked features of token-id rows (EOS included), as the family's converter makes them with pack=False
  (`converters.encdec_features` for T5, `causal.to_causal_features` for a causal LM, `tokens` its BOS / inputs EOS).
  Without targets (inference) the target features are zeros."""
  return converters.get(family).to_features(inputs, targets, feature_lengths, tokens)


def inference_features(inputs: Sequence[np.ndarray], feature_lengths: Mapping[str, int],
                       family: str = converters.DEFAULT, tokens: causal.StreamTokens | None = None) -> Batch:
  """The features rank classification and decoding read, of token-id rows of inputs alone (EOS included): T5's
  encoder inputs, a causal LM's left-padded prompt ([BOS] + inputs, `tokens` its BOS / inputs EOS); their
  `decoder_target_tokens` are zeros of the targets length, the decode length (`converters.Family`)."""
  return converters.get(family).inference_features(inputs, feature_lengths, tokens)


def text_tokens(vocabulary: seqio.Vocabulary) -> causal.StreamTokens:
  """The stream tokens of text inputs tokenized by `tokenize_texts` (which appends EOS): BOS as the tokenizer puts
  it, that EOS dropped from a causal prompt."""
  return causal.StreamTokens.of(vocabulary, inputs_add_eos=True)


def padded_batches(features: Mapping[str, np.ndarray], batch_size: int,
                   multiple: int | None = None) -> Iterator[tuple[Batch, int]]:
  """(global batch padded with zero examples, number of real rows): `batch_size` rows each. With `multiple` (the
  mesh's data-parallel size), a split smaller than one batch gets the fewest rows `multiple * 2**k` that hold it
  instead (8 eval examples at batch 128 run 8 rows, not 128; powers of two keep the compiled shapes few)."""
  total = next(iter(features.values())).shape[0]
  if multiple and total < batch_size:
    rows = multiple
    while rows < total:
      rows *= 2
    batch_size = min(rows, batch_size)
  for start in range(0, total, batch_size):
    chunk = {k: v[start:start + batch_size] for k, v in features.items()}
    real = next(iter(chunk.values())).shape[0]
    if real < batch_size:
      chunk = {k: np.concatenate([v, np.zeros((batch_size - real,) + v.shape[1:], v.dtype)]) for k, v in chunk.items()}
    yield chunk, real


def tokenize_texts(texts: Sequence[str], vocabulary: seqio.Vocabulary, feature_lengths: Mapping[str, int],
                   where: str = 'text inputs') -> list[np.ndarray]:
  """Texts -> id rows plus EOS, cut to the inputs length as seqio's `append_eos_after_trim` cuts; the rows cut
  are counted and reported once (`where` names them in the log line)."""
  rows = [np.asarray(list(vocabulary.encode(text)) + [vocabulary.eos_id], np.int32) for text in texts]
  truncation.Truncation.count(where, feature_lengths, {'inputs': [len(r) for r in rows]}).report()
  return [truncation.cut(r, feature_lengths['inputs'], True) for r in rows]


def example_text(example: Mapping[str, Any], feature: str, vocabulary: seqio.Vocabulary) -> str:
  """The text of a feature: its `*_pretokenized` copy when the task kept one, else the decoded ids."""
  raw = example.get(f'{feature}_pretokenized')
  if raw is not None:
    return raw.decode('utf-8') if isinstance(raw, bytes) else str(raw)
  return vocabulary.decode([int(i) for i in example[feature]])
