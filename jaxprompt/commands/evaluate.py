"""`jaxprompt eval`: the gin entry point `jaxprompt.evaluate`, and the tuned frozen model `eval` and `infer`
both run (any method, from its inference file: `jaxprompt.commands.prompt_files`)."""
from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import gin

from jaxprompt.commands import bank_files, configs, model_check
from jaxprompt.commands.groups import DataConfig, ModelSource, PromptSource
from jaxprompt.data import buckets, converters
from jaxprompt.data import pipeline as data_lib
from jaxprompt.errors import ConfigError
from jaxprompt.eval import banks
from jaxprompt.eval.evaluation import DecodeOptions, ModelFns, evaluate_sets, prepare_eval
from jaxprompt.eval.writers import write_json, write_jsonl
from jaxprompt.methods.base import Method
from jaxprompt.runtime import runtime as runtime_lib


def tuned_model(model: ModelSource, feature_lengths: Mapping[str,
                                                             int], method: Method, trainable: Any, *, eos_id: int = 1,
                decode: DecodeOptions | None = None, length_buckets: Any = buckets.DEFAULT) -> tuple[ModelFns, Any]:
  """The frozen model with a trained method on the mesh: (its jitted functions, the placed parameters they
  take)."""
  runtime = runtime_lib.build_runtime(model.config, method, model.require_checkpoint(), feature_lengths,
                                      model_parallel=model.model_parallel, eos_id=eos_id)
  return ModelFns(runtime, decode, buckets.LengthBuckets.from_spec(length_buckets)), runtime.place_trainable(trainable)


def check_eval_data(data: DataConfig) -> None:
  """eval / infer read examples in order, one per row."""
  if data.pack:
    raise ConfigError('PACK applies to training only: eval and infer read one example per row')


@gin.configurable(module='jaxprompt')
def evaluate(output_file: str | None = None, *, model: ModelSource | None = None, data: DataConfig | None = None,
             source: PromptSource | None = None, decode: DecodeOptions | None = None, rank_classification: bool = True,
             predictions_file: str | None = None) -> dict[str, Any]:
  """Scores a split of the task with a tuned method from `source` (a file, a training dir or named prompts).

  Groups left None are built from their gin bindings (`jaxprompt.commands.groups`): `model` the frozen model,
  `data` the task, its split (default 'validation'), batch size, `max_examples` and length buckets
  [LENGTH_BUCKETS].

  Metrics: per-token `loss`, `token_accuracy`, and the task's metric fns on predictions (rank classification
  over the task's label set when it has one and `rank_classification`, else decoding). Written as JSON to
  `output_file` (process 0); predictions as JSONL to `predictions_file` when given.

  `source.prompts` ({name: source}, `--prompt NAME=FILE`): an ensemble of the task's prompts. Every example
  runs under each of them in one batched pass; metrics are each prompt's (`<name>/<metric>`) and the majority
  vote's (`ensemble/<metric>`). On an encoder-only model the named prompts (each with its head) are a bank instead:
  each task of the mixture is scored with its own prompt, head and metrics (`<task>/<metric>`), as a multi-task
  run's checkpoint is. `source.allow_other_model`: load prompts recorded for another frozen model.
  """
  model, data, source = model or ModelSource(), data or DataConfig(), source or PromptSource()
  check_eval_data(data)
  model.require_checkpoint()
  split = data.split or 'validation'
  provider = data_lib.get_provider(data.require_task(), model.vocabulary, model.family, streams=False)
  eos_id = data_lib.task_vocabulary(provider).eos_id
  method, trainable, sources = bank_files.load_method(source, config=model.config, eos_id=eos_id, what='an ensemble')
  for task in data_lib.subtasks(provider, split):
    configs.check_vocabulary(data_lib.task_vocabulary(task), model.config, task.name)
  # A multi-task run's prompts.npz is a bank: each task's rows carry its id (an ensemble sets ids itself). An
  # encoder's named prompts are a bank with per-task heads, each scoring its own task's split.
  ensemble = bool(source.prompts) and model.family != converters.ENCODER_ONLY
  sets = prepare_eval(provider, split, data.task_feature_lengths, max_examples=data.max_examples,
                      rank_classification=rank_classification, task_names=() if ensemble else method.task_names,
                      family=model.family)
  data_lib.host_batch_size(data.batch_size, runtime_lib.data_parallel_size(model.model_parallel))
  fns, placed = tuned_model(model, data.task_feature_lengths, method, trainable, eos_id=eos_id, decode=decode,
                            length_buckets=data.length_buckets)
  matches = model_check.check_prompt_sources(sources, source.checkpoint_step, model.config,
                                             data_lib.task_vocabulary(provider), fns.rt.network,
                                             allow_other_model=source.allow_other_model)
  score_set = functools.partial(banks.evaluate_ensemble, names=list(source.prompts)) if ensemble else None
  metrics, records = evaluate_sets(fns, placed, sets, data.batch_size, score_set=score_set)
  result = {
      'task': provider.name, 'split': split,
      'prompt': dict(source.prompts) if source.prompts else source.prompt_file or source.checkpoint,
      'model_match': matches if source.prompts else matches[''], 'metrics': metrics
  }
  if output_file:
    write_json(output_file, result)
  if predictions_file:
    write_jsonl(predictions_file, records)
  return result
