"""The entry points' settings in groups: frozen dataclasses, each gin-configurable under `jaxprompt` and bound from
the usual macros by `gin_configs/runs/*.gin` (the loop's `Schedule` is the fifth group).

  group                       fields                                                    macros
  jaxprompt.ModelSource       config, checkpoint, model_parallel, vocabulary            MODEL_CONFIG,
                                                                                        INITIAL_CHECKPOINT_PATH,
                                                                                        MODEL_PARALLEL, VOCABULARY
  jaxprompt.DataConfig        mixture_or_task_name, task_feature_lengths, split,        MIXTURE_OR_TASK_NAME,
                              batch_size, max_examples, pack, length_buckets            TASK_FEATURE_LENGTHS,
                                                                                        BATCH_SIZE, PACK,
                                                                                        LENGTH_BUCKETS
  jaxprompt.Schedule          train_steps, eval_period, checkpoint_period, log_period   TRAIN_STEPS, EVAL_PERIOD,
                                                                                        CHECKPOINT_PERIOD
  jaxprompt.EvalConfig        split, batch_size, max_examples, task_metrics             EVAL_SPLIT,
                                                                                        EVAL_MAX_EXAMPLES
  jaxprompt.CheckpointConfig  keep, best_metric, best_mode
  jaxprompt.PromptSource      prompt_file, checkpoint, checkpoint_step, prompt_length,  PROMPT_FILE, PROMPT_LENGTH
                              prompts, combine, allow_other_model                       (and eval / infer's flags)

Each group checks the type and range of its fields when it is built, before any command reads or writes a file,
with one ConfigError line naming the macro (or gin parameter, or flag) to change; a macro's field by the macro
table (`jaxprompt.formats.macros`), the rule the command line checks the macro by right after parsing gin.
Whether a field may be unset is the command's to say (`infer` needs no task, `train_model` no checkpoint): see
`require_*`.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import gin

from jaxprompt.data import buckets
from jaxprompt.data import vocab as vocab_lib
from jaxprompt.errors import ConfigError
from jaxprompt.formats import macros, validation
from jaxprompt.methods.prompt_tuning import COMBINATIONS
from jaxprompt.models import families
from jaxprompt.models.base import ModelConfig
from jaxprompt.train.schedule import Schedule

__all__ = ['CheckpointConfig', 'DataConfig', 'EvalConfig', 'ModelSource', 'PromptSource', 'Schedule']


def _set(group: Any, name: str, value: Any) -> None:
  """A normalised field of a frozen group (only ever from its `__post_init__`)."""
  object.__setattr__(group, name, value)


@gin.configurable(module='jaxprompt')
@dataclasses.dataclass(frozen=True)
class ModelSource:
  """The frozen model: its config [MODEL_CONFIG], its weights (a T5X checkpoint in any format, a model dir or a
  Hugging Face safetensors folder) [INITIAL_CHECKPOINT_PATH], the devices of one replica [MODEL_PARALLEL] and the
  vocabulary every task is tokenized with [VOCABULARY; a causal LM's models/*.gin binds it: its own tokenizer. None:
  each task's own vocabulary, T5's for GLUE / SuperGLUE; kept as a vocabulary object]."""
  config: ModelConfig | None = None
  checkpoint: str | None = None
  model_parallel: int = 1
  vocabulary: Any = None

  def __post_init__(self):
    config = validation.require(self.config, 'MODEL_CONFIG', '"@jaxprompt.model_config()" (a models/*.gin)')
    if not families.is_model_config(config):
      raise macros.error('MODEL_CONFIG', config)
    macros.check(INITIAL_CHECKPOINT_PATH=self.checkpoint, MODEL_PARALLEL=self.model_parallel)
    _set(self, 'checkpoint', validation.optional_path(self.checkpoint, 'INITIAL_CHECKPOINT_PATH'))
    if self.vocabulary is not None:
      if not (vocab_lib.is_vocabulary(self.vocabulary) or isinstance(self.vocabulary, (str, os.PathLike))):
        raise macros.error('VOCABULARY', self.vocabulary)
      _set(self, 'vocabulary', vocab_lib.resolve(self.vocabulary))

  @property
  def family(self) -> str:
    """The model family (`config.family`): whose batch features the data pipeline makes."""
    return type(self.config).family

  def require_checkpoint(self) -> str:
    """The checkpoint, which every command but training from scratch needs."""
    return validation.require(self.checkpoint, 'INITIAL_CHECKPOINT_PATH', "\"'/path/to/checkpoint'\"")


@gin.configurable(module='jaxprompt')
@dataclasses.dataclass(frozen=True)
class DataConfig:
  """A command's examples: the seqio task or mixture [MIXTURE_OR_TASK_NAME] (a registered Task's name is kept),
  {'inputs': n, 'targets': m} [TASK_FEATURE_LENGTHS], the split (None: the command's own, 'train' to train and
  'validation' to evaluate or infer; --split) and the global batch [BATCH_SIZE].

  `max_examples` caps the split of eval / infer; `pack` puts several training examples per row [PACK];
  `length_buckets` cuts each batch to the smallest bucket holding its longest row [LENGTH_BUCKETS, see
  `jaxprompt.data.buckets`; kept as a LengthBuckets].
  """
  mixture_or_task_name: Any = None
  task_feature_lengths: Mapping[str, int] | None = None
  split: str | None = None
  batch_size: int = 32
  max_examples: int | None = None
  pack: bool = False
  length_buckets: Any = buckets.DEFAULT

  def __post_init__(self):
    name = getattr(self.mixture_or_task_name, 'name', self.mixture_or_task_name)  # a Task object: its name
    validation.require(self.task_feature_lengths, 'TASK_FEATURE_LENGTHS', "\"{'inputs': 512, 'targets': 16}\"")
    macros.check(MIXTURE_OR_TASK_NAME=name, TASK_FEATURE_LENGTHS=self.task_feature_lengths, BATCH_SIZE=self.batch_size,
                 PACK=self.pack)
    validation.check_text(**{'the split (--split, EVAL_SPLIT, INFER_SPLIT)': self.split})
    validation.check_positive(**{'jaxprompt.DataConfig.max_examples': self.max_examples})
    _set(self, 'mixture_or_task_name', name)
    _set(self, 'task_feature_lengths', {k: int(v) for k, v in self.task_feature_lengths.items()})
    _set(self, 'length_buckets', buckets.LengthBuckets.from_spec(self.length_buckets))  # LENGTH_BUCKETS' rule

  def require_task(self) -> str:
    """The task or mixture, which every command but infer on raw text needs."""
    return validation.require(self.mixture_or_task_name, 'MIXTURE_OR_TASK_NAME', "\"'my_task'\"")


@gin.configurable(module='jaxprompt')
@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """Training's periodic evaluation: the split scored every EVAL_PERIOD steps and after the last (None: no
  evaluation) [EVAL_SPLIT], its batch (None: BATCH_SIZE), at most `max_examples` of it [EVAL_MAX_EXAMPLES], and
  whether the task's metrics (rank classification / decoding) join the loss."""
  split: str | None = 'validation'
  batch_size: int | None = None
  max_examples: int | None = None
  task_metrics: bool = True

  def __post_init__(self):
    macros.check(EVAL_SPLIT=self.split, EVAL_MAX_EXAMPLES=self.max_examples)
    validation.check_positive(**{'jaxprompt.EvalConfig.batch_size': self.batch_size})
    validation.check_bool(**{'jaxprompt.EvalConfig.task_metrics': self.task_metrics})


@gin.configurable(module='jaxprompt')
@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  """Which training checkpoints stay: the `keep` newest, plus the best by `best_metric` (an evaluation metric such
  as 'accuracy' or 'loss'; None: none kept for it), the highest or lowest by `best_mode` ('max' / 'min')."""
  keep: int = 3
  best_metric: str | None = None
  best_mode: str = 'max'

  def __post_init__(self):
    validation.check_positive(**{'jaxprompt.CheckpointConfig.keep': self.keep})
    validation.check_text(**{'jaxprompt.CheckpointConfig.best_metric': self.best_metric})
    if self.best_mode not in ('max', 'min'):
      raise ConfigError(f"jaxprompt.CheckpointConfig.best_mode must be 'max' or 'min', got {self.best_mode!r}")


@gin.configurable(module='jaxprompt')
@dataclasses.dataclass(frozen=True)
class PromptSource:
  """What eval and infer run the frozen model with: one method file [PROMPT_FILE, --prompt_file] or a training
  MODEL_DIR / step dir [--checkpoint] at `checkpoint_step` [--step; None: the latest], or named `prompts`
  {name: source} (a prompt bank or an ensemble) [--prompt NAME=FILE].

  `prompt_length` [PROMPT_LENGTH; None: the file's] and `combine` (how an input prompt joins the input, one of
  `methods.prompt_tuning.COMBINATIONS`) apply to input prompts; `allow_other_model` loads prompts recorded for
  another frozen model [--allow_other_model].
  """
  prompt_file: str | None = None
  checkpoint: str | None = None
  checkpoint_step: int | None = None
  prompt_length: int | None = None
  prompts: Mapping[str, str] | None = None
  combine: str = 'prefix'
  allow_other_model: bool = False

  def __post_init__(self):
    macros.check(PROMPT_FILE=self.prompt_file, PROMPT_LENGTH=self.prompt_length)
    _set(self, 'prompt_file', validation.optional_path(self.prompt_file, 'PROMPT_FILE'))
    _set(self, 'checkpoint', validation.optional_path(self.checkpoint, '--checkpoint'))
    step = self.checkpoint_step
    if step is not None and (not isinstance(step, int) or isinstance(step, bool) or step < 0):
      raise ConfigError(f'--step (jaxprompt.PromptSource.checkpoint_step) must be a step number >= 0, got {step!r}')
    if self.prompts is not None:
      if not isinstance(self.prompts, Mapping) or not all(isinstance(k, str) for k in self.prompts):
        raise ConfigError(f'--prompt NAME=FILE (jaxprompt.PromptSource.prompts) must name its sources, got '
                          f'{self.prompts!r}')
      _set(self, 'prompts', {k: validation.optional_path(v, f'--prompt {k}=FILE') for k, v in self.prompts.items()})
      if None in self.prompts.values():
        raise ConfigError(f'--prompt NAME=FILE (jaxprompt.PromptSource.prompts) names no file for '
                          f'{[k for k, v in self.prompts.items() if v is None]}')
    if self.combine not in COMBINATIONS:
      raise ConfigError(f'jaxprompt.PromptSource.combine must be one of {", ".join(COMBINATIONS)}, got '
                        f'{self.combine!r}')
    validation.check_bool(**{'--allow_other_model (jaxprompt.PromptSource.allow_other_model)': self.allow_other_model})
