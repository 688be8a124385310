"""Config-level gin functions (module `jaxprompt`): what gin binds besides the entry points and their groups
(`commands/groups.py`), and the check that a task's vocabulary fits the model.

  jaxprompt.model_config(name, dtype, ...)   -> ModelConfig     (models/*.gin: a named config of any family)
  jaxprompt.hf_model_config(path, dtype, ...) -> ModelConfig    (models/hf_causal.gin, models/hf_encoder.gin: a
                                                                Hugging Face causal LM or BERT / RoBERTa folder)
  jaxprompt.loss_config(z_loss, ...)          -> LossConfig
  jaxprompt.task_vocabulary(task, vocabulary) -> the model's vocabulary, else the task's (prompts/*.gin)
  jaxprompt.task_label_set(task)              -> the task's class labels (prompts/class_labels.gin)
  jaxprompt.vocabulary(path, extra_ids)       -> a SentencePiece vocabulary (models/*.gin: VOCABULARY)
`macro_value(name)` evaluates a bound macro for commands that read the model's macros without a configurable of
their own (export, inspect).
"""
from __future__ import annotations

import functools
import os
from typing import Any

import gin
import jax.numpy as jnp

from jaxprompt.errors import ConfigError
from jaxprompt.formats import macros, validation
from jaxprompt.models import families
from jaxprompt.models.base import LossConfig, ModelConfig

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}


def _dtype(value: Any, name: str) -> Any:
  if value is None or not isinstance(value, str):
    return value
  if value not in _DTYPES:
    raise ConfigError(f'model_config.{name}={value!r} is not one of {sorted(_DTYPES)}')
  return _DTYPES[value]


def _overrides(dtype: Any, param_dtype: Any, dropout_rate: float | None, scan_layers: bool | None,
               remat_policy: str | None) -> dict[str, Any]:
  """The run-time fields a model config's gin function may change (every family's config has them)."""
  overrides = dict(dtype=_dtype(dtype, 'dtype'), param_dtype=_dtype(param_dtype, 'param_dtype'),
                   dropout_rate=dropout_rate, scan_layers=scan_layers, remat_policy=remat_policy)
  return {k: v for k, v in overrides.items() if v is not None}


@gin.configurable(module='jaxprompt')
def model_config(name: str = gin.REQUIRED, dtype: Any = None, param_dtype: Any = None,
                 dropout_rate: float | None = None, scan_layers: bool | None = None,
                 remat_policy: str | None = None) -> ModelConfig:
  """A named config of any family (T5's `jaxprompt.models.config.CONFIGS`, the causal LMs'
  `jaxprompt.models.decoder_config.CONFIGS`) with optional overrides.

  `dtype` is the activation dtype ('bfloat16' on TPU), `param_dtype` the frozen weights' dtype after loading.
  """
  return families.named_config(name, **_overrides(dtype, param_dtype, dropout_rate, scan_layers, remat_policy))


@gin.configurable(module='jaxprompt')
def hf_model_config(path: str = gin.REQUIRED, dtype: Any = None, param_dtype: Any = None,
                    dropout_rate: float | None = None, scan_layers: bool | None = None,
                    remat_policy: str | None = None) -> ModelConfig:
  """The config a Hugging Face folder's config.json describes: a causal LM (Llama, Mistral, Qwen2, GPT-2) or a
  BERT / RoBERTa encoder (model_type 'bert' / 'roberta'), any size, with the same overrides as `model_config`."""
  from jaxprompt.checkpoints import hf_causal, hf_encoder  # pylint: disable=g-import-not-at-top
  path = os.fspath(validation.require(path, 'HF_MODEL_DIR', "\"'/path/to/model'\" (the model's Hugging Face folder)"))
  encoder = hf_causal.read_hf_config(path).get('model_type') in hf_encoder.MODEL_TYPES
  config = hf_encoder.hf_encoder_config(path) if encoder else hf_causal.hf_causal_config(path)
  overrides = _overrides(dtype, param_dtype, dropout_rate, scan_layers, remat_policy)
  return config.replace(**overrides) if overrides else config


@gin.configurable(module='jaxprompt')
def loss_config(z_loss: float = 1e-4, label_smoothing: float = 0.0, loss_normalizing_factor: float | None = None,
                reduction: str = 'sum') -> LossConfig:
  """t5x's loss options (summed token cross-entropy plus z-loss by default)."""
  return LossConfig(z_loss=z_loss, label_smoothing=label_smoothing, loss_normalizing_factor=loss_normalizing_factor,
                    reduction=reduction)


@gin.configurable(module='jaxprompt')
def task_vocabulary(task: str = gin.REQUIRED, vocabulary: Any = None) -> Any:
  """The vocabulary class labels and texts of `task` are tokenized with: `vocabulary`, the model's own when its
  models/*.gin gives one (a causal LM reads every task with it), else the task's `targets` vocabulary."""
  if vocabulary is not None:
    from jaxprompt.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
    return vocab_lib.resolve(vocabulary)
  from jaxprompt.data import pipeline as data_pipeline  # pylint: disable=g-import-not-at-top
  return data_pipeline.targets_vocabulary(data_pipeline.get_provider(task, streams=False))


@gin.configurable(module='jaxprompt')
def task_label_set(task: str = gin.REQUIRED) -> list[str]:
  """The task's class labels, e.g. for class-label prompt initialisation; an error if it has none."""
  from jaxprompt.data import pipeline as data_pipeline  # pylint: disable=g-import-not-at-top
  labels = data_pipeline.label_set(task)
  if not labels:
    raise ConfigError(f'task {task!r} has no label set, so CLASS_LABELS cannot default to it: set '
                      "--gin.CLASS_LABELS=\"['a', 'b']\" or use another prompt initialiser")
  return labels


@functools.cache
def _vocabulary(path: str | None, extra_ids: int) -> Any:
  from jaxprompt.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  return vocab_lib.get_vocabulary(path, extra_ids)


@gin.configurable(module='jaxprompt')
def vocabulary(path: str | None = None, extra_ids: int = 100) -> Any:
  """A SentencePiece vocabulary numbered as seqio does (`jaxprompt.data.sentencepiece_vocab`; no TensorFlow):
  `path` (local or gs://), default T5's; one object per arguments."""
  return _vocabulary(None if path is None else os.fspath(path), int(extra_ids))


def macro_value(name: str) -> Any:
  """The value of gin macro `name` (evaluating `@fn()` references), None when unbound: a models/*.gin file
  alone then configures the command."""
  value = macros.bound(name)
  if isinstance(value, gin.config.ConfigurableReference):
    return value.scoped_configurable_fn() if value.evaluate else value.scoped_configurable_fn
  return value


def check_vocabulary(vocab: Any, config: ModelConfig, task_name: str) -> None:
  """Token ids must index the model's embedding table (an id past it would silently embed as zeros)."""
  size = getattr(vocab, 'vocab_size', None)
  if size is not None and size > config.vocab_size:
    raise ConfigError(f'task {task_name!r} uses a vocabulary of {size} ids but the model embeds only '
                      f'{config.vocab_size}: use the model\'s vocabulary (VOCABULARY) for this task')
