"""Predicting with a prompt: inputs from a task split, a text file (one input per line) or stdin, written as
JSONL records `{"input", "prediction", "prediction_by", <its score>, "score"}` (`jaxprompt infer`): rank
classification over a label set, else decoding; the score fields are `jaxprompt.eval.records`'."""
from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import gin
import numpy as np

from jaxprompt.commands import bank_files, configs, model_check
from jaxprompt.commands.evaluate import check_eval_data, tuned_model
from jaxprompt.commands.groups import DataConfig, ModelSource, PromptSource
from jaxprompt.data import converters, task_heads
from jaxprompt.data import pipeline as data_lib
from jaxprompt.data import vocab as vocab_lib
from jaxprompt.data.causal import StreamTokens
from jaxprompt.errors import ConfigError, DataError
from jaxprompt.eval import banks, label_eval, records, writers
from jaxprompt.eval import evaluation as eval_lib
from jaxprompt.formats import files
from jaxprompt.models.task_heads import TaskHeads
from jaxprompt.runtime import runtime as runtime_lib

if TYPE_CHECKING:  # infer on text loads neither seqio nor TensorFlow (a task's inputs do)
  import seqio


def read_input_lines(input_file: str, stdin=None) -> list[str]:
  """Non-empty lines of a UTF-8 text file (local / gs://), or of stdin for '-'."""
  if input_file == '-':
    text = (stdin or sys.stdin).read()
    where = 'stdin'
  else:
    if not files.exists(input_file) or files.isdir(input_file):
      raise DataError(f'input file {input_file} does not exist (or is a directory)')
    raw = files.read_bytes(input_file)
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
  if vocab_lib.is_vocabulary(vocabulary):
    return vocabulary
  if vocabulary is not None:
    return vocab_lib.get_vocabulary(str(vocabulary))
  if provider is not None:
    return data_lib.inputs_vocabulary(provider)
  return vocab_lib.get_default_vocabulary()


@dataclasses.dataclass
class Inputs:
  """One group of inputs predicted alike: the rows of one task's split, or the text inputs (`task` their task's
  name, None without one). `labels`: rank classification over these, else decoding. `tokens`: the special ids
  a causal LM's prompt takes from the inputs' vocabulary (`data.causal.StreamTokens`)."""
  task: str | None
  texts: list[str]
  rows: list[np.ndarray]  # token ids of each input
  vocabulary: seqio.Vocabulary
  labels: list[str] | None
  tokens: StreamTokens


def check_labels(labels: Mapping[str, Sequence[str]], provider: Any, split: str, texts: Sequence[str] | None) -> None:
  """One prompt's `--labels NAME=A|B`: NAME is the task whose rows rank over them (a task of the split read, or
  the task of text inputs); text inputs without a task take one label set under any NAME."""
  if texts is not None and provider is None:
    if len(labels) > 1:
      raise ConfigError(f'one prompt ranks text inputs over one label set; --labels gives {len(labels)} '
                        f'({sorted(labels)})')
    return
  tasks = [provider.name] if texts is not None else [t.name for t in data_lib.subtasks(provider, split)]
  unknown = sorted(set(labels) - set(tasks))
  if unknown:
    raise ConfigError(f'--labels names {unknown}, which are not the task(s) of these inputs: {tasks} (a prompt '
                      'bank names its tasks with --prompt NAME=FILE)')


def read_inputs(provider: Any, texts: Sequence[str] | None, vocabulary: seqio.Vocabulary, split: str,
                feature_lengths: Mapping[str, int], max_examples: int | None, labels: Mapping[str, Sequence[str]],
                rank_classification: bool) -> list[Inputs]:
  """The inputs, grouped: `texts` (tokenized with `vocabulary`) or each task's split. A group ranks over
  `labels[task]`, else its task's label set when `rank_classification` (as eval does), else it decodes; every
  label set is checked against the targets length here, before the model loads."""

  def label_set(task: str | None, vocab: seqio.Vocabulary) -> list[str] | None:
    chosen = labels.get(task) if task is not None else next(iter(labels.values()), None)
    if chosen is None and task is not None and rank_classification:
      chosen = data_lib.label_set(task)
    if chosen:
      eval_lib.label_candidates(list(chosen), vocab, feature_lengths['targets'])
    return list(chosen) if chosen else None

  if texts is not None:
    task = provider.name if provider is not None else None
    rows = data_lib.tokenize_texts(texts, vocabulary, feature_lengths)
    return [Inputs(task, list(texts), rows, vocabulary, label_set(task, vocabulary), data_lib.text_tokens(vocabulary))]
  groups = []
  for task in data_lib.subtasks(provider, split):
    examples, _ = data_lib.read_examples(task, feature_lengths, split, max_examples, counted=('inputs',))
    vocab_in = data_lib.inputs_vocabulary(task)
    vocab_out = data_lib.targets_vocabulary(task)
    groups.append(
        Inputs(task.name, [data_lib.example_text(ex, 'inputs', vocab_in) for ex in examples],
               [ex['inputs'] for ex in examples], vocab_out, label_set(task.name, vocab_out),
               data_lib.stream_tokens(task)))
  return groups


def predict_records(fns: eval_lib.ModelFns, trainable: Any, groups: Sequence[Inputs],
                    feature_lengths: Mapping[str, int], batch_size: int) -> list[dict[str, Any]]:
  """One record per input: `input`, `prediction` and its score fields (`jaxprompt.eval.records`)."""
  out = []
  for group in groups:
    features = data_lib.inference_features(group.rows, feature_lengths, fns.family, group.tokens)
    predictions, scores = eval_lib.predict(fns, trainable, features, batch_size, group.vocabulary, group.labels)
    by = records.prediction_by(bool(group.labels), fns.decode_options.method)
    out += [{'input': t, 'prediction': p, **records.score_fields(s, by)}
            for t, p, s in zip(group.texts, predictions, scores)]
  return out


def ensemble_records(fns: eval_lib.ModelFns, trainable: Any, names: list[str], groups: Sequence[Inputs],
                     feature_lengths: Mapping[str, int], batch_size: int) -> list[dict[str, Any]]:
  """Records of an ensemble: each input's majority vote (`prediction`), every prompt's (`predictions`) and their
  scores."""
  out = []
  for group in groups:
    features = data_lib.inference_features(group.rows, feature_lengths, fns.family, group.tokens)
    answers, scores = banks.ensemble_predict(fns, trainable, features, len(names), batch_size, group.vocabulary,
                                             group.labels)
    by = records.prediction_by(bool(group.labels), fns.decode_options.method)
    for text, row, row_scores in zip(group.texts, answers, scores):
      out.append({
          'input': text, 'prediction': banks.vote(row, row_scores), 'predictions': dict(zip(names, row)),
          **records.ensemble_score_fields(dict(zip(names, row_scores)), by)
      })
  return out


def _requests(method: Any, texts: Sequence[str] | None, input_file: str | None) -> list[dict[str, Any]]:
  """A prompt bank's JSONL requests (`banks.parse_requests`), read before the model loads."""
  if texts is None:
    raise ConfigError(f'the prompt bank of tasks {list(method.task_names)} answers JSONL requests '
                      '{"task": ..., "input": ...}: give --input_file (a file, or - for stdin)')
  return banks.parse_requests(texts, method.task_names, where='stdin' if input_file in (None, '-') else input_file)


def head_inputs(method: Any, provider: Any, texts: Sequence[str] | None, vocabulary: Any, split: str,
                feature_lengths: Mapping[str, int], max_examples: int | None) -> list[label_eval.LabelSet]:
  """An encoder-only model's inputs: each task's split, or text lines (named by the task's labels when a task is
  given, else transformers' LABEL_<id>)."""
  if texts is None:
    return label_eval.prepare(provider, split, feature_lengths, max_examples=max_examples, task_names=method.task_names)
  head = getattr(method, 'head', None)
  if head is None:
    raise ConfigError('an encoder-only model predicts with a task head: give the method file its head.npz beside it '
                      '(final_head.npz), or a run directory')
  labels = text_labels(provider.name if provider is not None else 'text inputs', head, known=provider is not None)
  return [label_eval.text_set(texts, labels, vocabulary, feature_lengths)]


def text_labels(name: str, head: Any, known: bool = True) -> task_heads.TaskLabels:
  """The label names text inputs of task `name` are answered with: the task's (`known` and a label or tagging
  task), else the head's kind with transformers' LABEL_<id> names."""
  if known and task_heads.head_labels(name) is not None:
    return label_eval.task_labels(name)
  names = tuple(f'LABEL_{i}' for i in range(head.outputs)) if head.kind == 'tagging' else None
  return task_heads.TaskLabels(name, head.kind, names)


def head_requests(method: Any, requests: Sequence[Mapping[str, Any]], vocabulary: Any,
                  feature_lengths: Mapping[str, int]) -> dict[str, label_eval.LabelSet]:
  """{task: its requests' inputs for its head} of a bank with per-task heads (`banks.serve_heads`)."""
  if not isinstance(method.head, TaskHeads):
    raise ConfigError(f'the prompt bank of tasks {list(method.task_names)} has no task heads, which an encoder-only '
                      'model predicts with: give each --prompt its run\'s head file beside it (final_head.npz), or '
                      'a run directory')
  sets = {}
  for task, head in method.head.items():
    texts = [r['input'] for r in requests if r['task'] == task]
    if texts:
      sets[task] = label_eval.text_set(texts, text_labels(task, head), vocabulary, feature_lengths)
  return sets


@gin.configurable(module='jaxprompt')
def infer(output_file: str | None = None, *, model: ModelSource | None = None, data: DataConfig | None = None,
          source: PromptSource | None = None, decode: eval_lib.DecodeOptions | None = None,
          input_file: str | None = None, vocabulary: Any = None, labels: Mapping[str, Sequence[str]] | None = None,
          ensemble: bool = False, rank_classification: bool = True, stdout=None) -> list[dict[str, Any]]:
  """Predicts with a tuned method from `source` and writes JSONL to `output_file` (stdout when None or '-').

  Groups left None are built from their gin bindings (`jaxprompt.commands.groups`). Inputs: `input_file` (one
  input per line; '-' = stdin) if given, else the split of `data`'s task (default 'validation'), else stdin
  (`data` without a task). Text inputs are tokenized with `vocabulary` (a SentencePiece path or seqio
  vocabulary), else the task's, else T5's default vocabulary. Batches are cut to `data.length_buckets` of
  their inputs [LENGTH_BUCKETS]; `data.max_examples` caps the inputs.

  Each record is `{"input", "prediction", "prediction_by", <score>, "score"}`, the score named for what it is
  (`jaxprompt.eval.records`). Like eval, the inputs of a task with a label set are rank-classified over it
  (`log_likelihood`; `rank_classification=False` decodes them instead), others decoded (`beam_score`, or
  `sample_log_prob` when sampling). `labels` ({name: [label, ...]}, `--labels NAME=A|B`) gives label sets:
  with one prompt, for the task NAME of the inputs (or any one NAME for text inputs without a task).

  Many prompts (`source.prompts` {name: source}, `--prompt NAME=FILE`): a prompt bank over the one frozen
  model. The input is then JSONL, one request `{"task": name, "input": text, ...}` per line, answered in input
  order with the row's fields plus the prediction's; batches mix tasks freely. Tasks in `labels` are
  rank-classified over their labels, the others decoded. With `ensemble` the prompts are one task's: plain
  inputs as above, each run under every prompt in one pass, answered with the majority vote and each prompt's
  `predictions`. On an encoder-only model each prompt brings its task head and every request row is answered by
  its task's head (`banks.serve_heads`), as is a multi-task run with heads given by --checkpoint.
  """
  model, data, source = model or ModelSource(), data or DataConfig(), source or PromptSource()
  check_eval_data(data)
  model.require_checkpoint()
  split, lengths = data.split or 'validation', data.task_feature_lengths
  batch_size, max_examples = data.batch_size, data.max_examples
  provider = (data_lib.get_provider(data.mixture_or_task_name, model.vocabulary, model.family, streams=False)
              if data.mixture_or_task_name else None)
  prompts, labels = source.prompts, dict(labels or {})
  if ensemble and not (prompts and len(prompts) > 1):
    raise ConfigError('--ensemble needs several prompts of the task: --prompt NAME=FILE, repeated')
  if ensemble and labels:
    raise ConfigError('--labels does not apply to --ensemble: an ensemble ranks over its task\'s label set')
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
  if model.family == converters.ENCODER_ONLY:
    if ensemble:
      raise ConfigError('--ensemble votes over text answers; an encoder-only bank answers each row with its own '
                        "task's prompt and head: drop --ensemble")
    vocab = vocab if provider is None else data_lib.task_vocabulary(provider)  # what train and eval fingerprint
    requests = _requests(method, texts, input_file) if method.task_names and texts is not None else None
    sets = (head_requests(method, requests, vocab, lengths) if requests is not None else head_inputs(
        method, provider, texts, vocab, split, lengths, max_examples))
    fns, placed = tuned_model(model, lengths, method, trainable, eos_id=vocab.eos_id,
                              length_buckets=data.length_buckets)
    model_check.check_prompt_sources(sources, source.checkpoint_step, model.config, vocab, fns.rt.network,
                                     allow_other_model=source.allow_other_model)
    if requests is not None:
      out = banks.serve_heads(fns, placed, method.task_names, requests, sets, batch_size)
    else:
      out = [r for s in sets for r in label_eval.records(s, *label_eval.predict(fns, placed, s, batch_size))]
    writers.write_jsonl(output_file, out, stream=stdout or sys.stdout)
    return out
  requests, groups = None, None
  is_bank = bool(method.task_names) and not ensemble  # --prompt NAME=FILE, or a multi-task run's prompts.npz
  if is_bank:  # read and check the requests before the model loads
    requests = _requests(method, texts, input_file)
    banks.candidate_tables(labels, method.task_names, vocab, lengths['targets'])  # labels checked now
  else:
    check_labels(labels, provider, split, texts)
    groups = read_inputs(provider, texts, vocab, split, lengths, max_examples, labels, rank_classification)
  fns, placed = tuned_model(model, lengths, method, trainable, eos_id=vocab.eos_id, decode=decode,
                            length_buckets=data.length_buckets)
  model_check.check_prompt_sources(sources, source.checkpoint_step, model.config, vocab, fns.rt.network,
                                   allow_other_model=source.allow_other_model)
  if requests is not None:
    out = banks.serve(fns, placed, method.task_names, requests, vocab, lengths, batch_size, labels)
  elif ensemble:
    out = ensemble_records(fns, placed, list(prompts or {}), groups, lengths, batch_size)
  else:
    out = predict_records(fns, placed, groups, lengths, batch_size)
  writers.write_jsonl(output_file, out, stream=stdout or sys.stdout)
  return out
