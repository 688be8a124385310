"""Decoding with a prompt: inputs from a task split, a text file (one input per line) or stdin, written as
JSONL records `{"input": ..., "prediction": ..., "score": ...}` (`jaxprompt infer`)."""
from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

import gin
import seqio
import tensorflow as tf

from jaxprompt.commands import bank_files, configs, model_check
from jaxprompt.commands.evaluate import check_eval_data, tuned_model
from jaxprompt.commands.groups import DataConfig, ModelSource, PromptSource
from jaxprompt.data import pipeline as data_lib
from jaxprompt.data import vocab as vocab_lib
from jaxprompt.errors import ConfigError, DataError
from jaxprompt.eval import banks, writers
from jaxprompt.eval import evaluation as eval_lib
from jaxprompt.runtime import runtime as runtime_lib


def read_input_lines(input_file: str, stdin=None) -> list[str]:
  """Non-empty lines of a UTF-8 text file (local / gs://), or of stdin for '-'."""
  if input_file == '-':
    text = (stdin or sys.stdin).read()
    where = 'stdin'
  else:
    if not tf.io.gfile.exists(input_file) or tf.io.gfile.isdir(input_file):
      raise DataError(f'input file {input_file} does not exist (or is a directory)')
    with tf.io.gfile.GFile(input_file, 'rb') as f:
      raw = f.read()
    try:
      text = raw.decode('utf-8-sig')
    except UnicodeDecodeError as e:
      line = raw[:e.start].count(b'\n') + 1
      raise DataError(f'input file {input_file}:{line}: not UTF-8 text') from e
    where = input_file
  lines = [line.rstrip('\r') for line in text.split('\n')]
  lines = [line for line in lines if line.strip()]
  if not lines:
    raise DataError(f'no inputs: {where} has no non-empty line')
  return lines


def _vocabulary(provider: Any, vocabulary: Any) -> seqio.Vocabulary:
  if isinstance(vocabulary, seqio.Vocabulary):
    return vocabulary
  if vocabulary is not None:
    return vocab_lib.get_vocabulary(str(vocabulary))
  if provider is not None:
    return data_lib.inputs_vocabulary(provider)
  return vocab_lib.get_default_vocabulary()


def decode_texts(fns: eval_lib.ModelFns, trainable: Any, texts: Sequence[str], vocabulary: seqio.Vocabulary,
                 feature_lengths: Mapping[str, int], batch_size: int) -> list[dict[str, Any]]:
  """Records for raw input texts (tokenized with `vocabulary`, trimmed to the inputs length + EOS)."""
  features = data_lib.to_features(data_lib.tokenize_texts(texts, vocabulary, feature_lengths['inputs']), None,
                                  feature_lengths)
  predictions, scores = eval_lib.predict(fns, trainable, features, batch_size, vocabulary, None)
  return [{'input': t, 'prediction': p, 'score': s} for t, p, s in zip(texts, predictions, scores)]


def decode_task(fns: eval_lib.ModelFns, trainable: Any, provider: Any, split: str, feature_lengths: Mapping[str, int],
                batch_size: int, max_examples: int | None) -> list[dict[str, Any]]:
  """Records for the inputs of a task split (every task of a mixture that has the split)."""
  records = []
  for task in data_lib.subtasks(provider, split):
    examples = data_lib.read_examples(task, feature_lengths, split, max_examples)
    features = data_lib.to_features([ex['inputs'] for ex in examples], None, feature_lengths)
    vocabulary = data_lib.targets_vocabulary(task)
    predictions, scores = eval_lib.predict(fns, trainable, features, batch_size, vocabulary, None)
    vocab_in = data_lib.inputs_vocabulary(task)
    for ex, p, s in zip(examples, predictions, scores):
      records.append({'input': data_lib.example_text(ex, 'inputs', vocab_in), 'prediction': p, 'score': s})
  return records


def ensemble_records(fns: eval_lib.ModelFns, trainable: Any, names: list[str], provider: Any,
                     texts: Sequence[str] | None, vocabulary: seqio.Vocabulary, split: str,
                     feature_lengths: Mapping[str,
                                              int], batch_size: int, max_examples: int | None) -> list[dict[str, Any]]:
  """Records of an ensemble: each input's majority vote (`prediction`) and every prompt's (`predictions`);
  text inputs decode, a task split's rows rank over the task's labels when it has them."""
  sources = []
  if texts is not None:
    rows = data_lib.tokenize_texts(texts, vocabulary, feature_lengths['inputs'])
    sources.append((list(texts), rows, vocabulary, None))
  else:
    for task in data_lib.subtasks(provider, split):
      examples = data_lib.read_examples(task, feature_lengths, split, max_examples)
      sources.append(([data_lib.example_text(ex, 'inputs', data_lib.inputs_vocabulary(task)) for ex in examples
                      ], [ex['inputs'] for ex in examples], data_lib.targets_vocabulary(task),
                      data_lib.label_set(task.name)))
  records = []
  for inputs, rows, vocab, labels in sources:
    features = data_lib.to_features(rows, None, feature_lengths)
    answers, scores = banks.ensemble_predict(fns, trainable, features, len(names), batch_size, vocab, labels)
    for text, row, row_scores in zip(inputs, answers, scores):
      records.append({
          'input': text, 'prediction': banks.vote(row, row_scores), 'predictions': dict(zip(names, row)),
          'scores': dict(zip(names, row_scores))
      })
  return records


@gin.configurable(module='jaxprompt')
def infer(output_file: str | None = None, *, model: ModelSource | None = None, data: DataConfig | None = None,
          source: PromptSource | None = None, decode: eval_lib.DecodeOptions | None = None,
          input_file: str | None = None, vocabulary: Any = None, labels: Mapping[str, Sequence[str]] | None = None,
          ensemble: bool = False, stdout=None) -> list[dict[str, Any]]:
  """Decodes inputs with a tuned method from `source` and writes JSONL to `output_file` (stdout when None or '-').

  Groups left None are built from their gin bindings (`jaxprompt.commands.groups`). Inputs: `input_file` (one
  input per line; '-' = stdin) if given, else the split of `data`'s task (default 'validation'), else stdin
  (`data` without a task). Text inputs are tokenized with `vocabulary` (a SentencePiece path or seqio
  vocabulary), else the task's, else T5's default vocabulary. Batches are cut to `data.length_buckets` of
  their inputs [LENGTH_BUCKETS]; `data.max_examples` caps the inputs.

  Many prompts (`source.prompts` {name: source}, `--prompt NAME=FILE`): a prompt bank over the one frozen
  model. The input is then JSONL, one request `{"task": name, "input": text, ...}` per line, answered in input
  order with the row's fields plus `prediction` and `score`; batches mix tasks freely. Tasks in `labels`
  ({name: [label, ...]}) are rank-classified over their labels, the others decoded. With `ensemble` the
  prompts are one task's: plain inputs as above, each run under every prompt in one pass, answered with the
  majority vote and each prompt's `predictions`.
  """
  model, data, source = model or ModelSource(), data or DataConfig(), source or PromptSource()
  check_eval_data(data)
  model.require_checkpoint()
  split, lengths = data.split or 'validation', data.task_feature_lengths
  batch_size, max_examples = data.batch_size, data.max_examples
  provider = data_lib.get_provider(data.mixture_or_task_name) if data.mixture_or_task_name else None
  prompts = source.prompts
  if ensemble and not (prompts and len(prompts) > 1):
    raise ConfigError('--ensemble needs several prompts of the task: --prompt NAME=FILE, repeated')
  texts = None
  if prompts and not ensemble and input_file is None:
    input_file = '-'  # a prompt bank reads JSONL requests, never a task split
  if input_file is not None or provider is None:
    texts = read_input_lines(input_file or '-')
    if max_examples:
      texts = texts[:max_examples]
  else:
    data_lib.subtasks(provider, split)
  vocab = _vocabulary(provider, vocabulary)
  configs.check_vocabulary(vocab, model.config, provider.name if provider is not None else 'text inputs')
  data_lib.host_batch_size(batch_size, runtime_lib.data_parallel_size(model.model_parallel))
  method, trainable, sources = bank_files.load_method(source, config=model.config, eos_id=vocab.eos_id,
                                                      what='a prompt bank')
  requests = None
  is_bank = bool(method.task_names) and not ensemble  # --prompt NAME=FILE, or a multi-task run's prompts.npz
  if labels and not is_bank:
    raise ConfigError('--labels NAME=A|B applies to the tasks of a prompt bank (--prompt NAME=FILE, no --ensemble)')
  if is_bank:  # read and check the requests before the model loads
    if texts is None:
      raise ConfigError(f'the prompt bank of tasks {list(method.task_names)} answers JSONL requests '
                        '{"task": ..., "input": ...}: give --input_file (a file, or - for stdin)')
    requests = banks.parse_requests(texts, method.task_names,
                                    where='stdin' if input_file in (None, '-') else input_file)
    banks.candidate_tables(labels or {}, method.task_names, vocab, lengths['targets'])  # labels checked now
  fns, placed = tuned_model(model, lengths, method, trainable, eos_id=vocab.eos_id, decode=decode,
                            length_buckets=data.length_buckets)
  model_check.check_prompt_sources(sources, source.checkpoint_step, model.config, vocab, fns.rt.network,
                                   allow_other_model=source.allow_other_model)
  if requests is not None:
    records = banks.serve(fns, placed, method.task_names, requests, vocab, lengths, batch_size, labels)
  elif ensemble:
    records = ensemble_records(fns, placed, list(prompts or {}), provider, texts, vocab, split, lengths, batch_size,
                               max_examples)
  elif texts is not None:
    records = decode_texts(fns, placed, texts, vocab, lengths, batch_size)
  else:
    records = decode_task(fns, placed, provider, split, lengths, batch_size, max_examples)
  writers.write_jsonl(output_file, records, stream=stdout or sys.stdout)
  return records
