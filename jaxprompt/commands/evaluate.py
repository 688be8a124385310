"""`jaxprompt eval`: the gin entry point `jaxprompt.evaluate`, and the tuned frozen model `eval` and `infer`
both run (any method, from its inference file: `jaxprompt.commands.prompt_files`)."""
from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import gin

from jaxprompt.commands import bank_files, configs, model_check
from jaxprompt.data import buckets
from jaxprompt.data import pipeline as data
from jaxprompt.eval import banks
from jaxprompt.eval.evaluation import DecodeOptions, ModelFns, evaluate_sets, prepare_eval
from jaxprompt.eval.writers import write_json, write_jsonl
from jaxprompt.formats import validation
from jaxprompt.methods.base import Method
from jaxprompt.models.config import T5Config
from jaxprompt.runtime import runtime as runtime_lib


def tuned_model(config: T5Config, checkpoint_path: str, feature_lengths: Mapping[str, int], method: Method,
                trainable: Any, *, model_parallel: int = 1, eos_id: int = 1, decode: DecodeOptions | None = None,
                length_buckets: Any = buckets.DEFAULT) -> tuple[ModelFns, Any]:
  """The frozen model with a trained method on the mesh: (its jitted functions, the placed parameters they
  take)."""
  runtime = runtime_lib.build_runtime(config, method, checkpoint_path, feature_lengths, model_parallel=model_parallel,
                                      eos_id=eos_id)
  return ModelFns(runtime, decode, length_buckets), runtime.place_trainable(trainable)


@gin.configurable(module='jaxprompt')
def evaluate(output_file: str | None = None, *, model_config: T5Config | None = None,
             initial_checkpoint_path: str | None = None, mixture_or_task_name: str | None = None,
             task_feature_lengths: Mapping[str, int] | None = None, prompt_length: int | None = None,
             prompt_file: str | None = None, checkpoint: str | None = None, checkpoint_step: int | None = None,
             split: str = 'validation', batch_size: int = 32, max_examples: int | None = None,
             rank_classification: bool = True, decode: DecodeOptions | None = None, prompt_combine: str = 'prefix',
             model_parallel: int = 1, predictions_file: str | None = None, length_buckets: Any = buckets.DEFAULT,
             prompts: Mapping[str, str] | None = None, allow_other_model: bool = False) -> dict[str, Any]:
  """Scores `split` of the task with a prompt from `prompt_file` (.npy) or `checkpoint` (a training dir).

  Metrics: per-token `loss`, `token_accuracy`, and the task's metric fns on predictions (rank classification
  over the task's label set when it has one and `rank_classification`, else decoding). Written as JSON to
  `output_file` (process 0); predictions as JSONL to `predictions_file` when given. Batches are cut to
  `length_buckets` [LENGTH_BUCKETS] (`jaxprompt.data.buckets`; None: fixed length).

  `prompts` ({name: source}, `--prompt NAME=FILE`): an ensemble of the task's prompts. Every example runs
  under each of them in one batched pass; metrics are each prompt's (`<name>/<metric>`) and the majority
  vote's (`ensemble/<metric>`). `allow_other_model`: load prompts recorded for another frozen model.
  """
  config, ckpt, name, lengths = configs.check_common(model_config, initial_checkpoint_path, mixture_or_task_name,
                                                     task_feature_lengths)
  validation.check_positive(batch_size=batch_size, max_examples=max_examples, PROMPT_LENGTH=prompt_length)
  length_buckets = buckets.LengthBuckets.from_spec(length_buckets)
  provider = data.get_provider(name)
  eos_id = data.targets_vocabulary(provider).eos_id
  method, trainable, sources = bank_files.load_method(prompts=prompts, prompt_file=prompt_file, checkpoint=checkpoint,
                                                      step=checkpoint_step, prompt_length=prompt_length, config=config,
                                                      combine=prompt_combine, eos_id=eos_id, what='an ensemble')
  for task in data.subtasks(provider, split):
    configs.check_vocabulary(data.targets_vocabulary(task), config, task.name)
  # A multi-task run's prompts.npz is a bank: each task's rows carry its id (an ensemble sets ids itself).
  sets = prepare_eval(provider, split, lengths, max_examples=max_examples, rank_classification=rank_classification,
                      task_names=() if prompts else method.task_names)
  data.host_batch_size(batch_size, runtime_lib.data_parallel_size(model_parallel))
  fns, placed = tuned_model(config, ckpt, lengths, method, trainable, model_parallel=model_parallel, eos_id=eos_id,
                            decode=decode, length_buckets=length_buckets)
  matches = model_check.check_prompt_sources(sources, checkpoint_step, config, data.targets_vocabulary(provider),
                                             fns.rt.network, allow_other_model=allow_other_model)
  ensemble = functools.partial(banks.evaluate_ensemble, names=list(prompts)) if prompts else None
  metrics, records = evaluate_sets(fns, placed, sets, batch_size, score_set=ensemble)
  result = {
      'task': provider.name, 'split': split, 'prompt': dict(prompts) if prompts else prompt_file or checkpoint,
      'model_match': matches if prompts else matches[''], 'metrics': metrics
  }
  if output_file:
    write_json(output_file, result)
  if predictions_file:
    write_jsonl(predictions_file, records)
  return result
