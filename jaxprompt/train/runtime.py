"""Pieces shared by `train`, `evaluate` and `infer`: the config-level gin functions, the frozen model on its
mesh, and prompt files.

Config-level gin functions (module `jaxprompt`), the only things besides the entry points that gin binds:
  jaxprompt.model_config(name, dtype, ...)   -> T5Config        (models/*.gin)
  jaxprompt.loss_config(z_loss, ...)          -> LossConfig
  jaxprompt.task_vocabulary(task)             -> the task's targets vocabulary (prompts/*.gin)
  jaxprompt.task_label_set(task)              -> the task's class labels (prompts/class_labels.gin)
  jaxprompt.vocabulary(path, extra_ids)       -> a SentencePiece vocabulary (models/*.gin: VOCABULARY)
"""
from __future__ import annotations

import dataclasses
import functools
import io
import os
from typing import Any, Mapping, Sequence

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from jaxprompt.parallel import partitioning
from jaxprompt.errors import ConfigError, PromptError
from jaxprompt.models.config import T5Config, get_config
from jaxprompt.models.wrapper import PROMPT_KEY, LossConfig, PromptModel
from jaxprompt.methods import initializers
from jaxprompt.methods.prompt_tuning import Prompt
from jaxprompt.train.optim import PromptOptimizer
from jaxprompt.train.compiled import ShardedSteps
from jaxprompt.commands import validation

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}
_HF_FILES = ('model.safetensors', 'model.safetensors.index.json')


# ------------------------------------------------------------------------------------ runtime


@dataclasses.dataclass
class Runtime:
  """The frozen model placed on its mesh, and the partitioned steps to run it."""
  config: T5Config
  model: PromptModel
  mesh: jax.sharding.Mesh
  rules: Any
  steps: ShardedSteps
  frozen: Any

  @property
  def data_parallel(self) -> int:
    return self.mesh.shape['data']

  def place_prompt(self, prompt: np.ndarray | jax.Array) -> dict:
    """{'prompt': [P, d]} on the mesh with the prompt's sharding."""
    return jax.device_put({'prompt': jnp.asarray(prompt, self.model.prompt.param_dtype)},
                          self.steps.prompt_shardings)


def data_parallel_size(model_parallel: int) -> int:
  """Size of the mesh's 'data' axis for `model_parallel`, known before anything is loaded."""
  validation.check_positive(model_parallel=model_parallel)
  if jax.device_count() % model_parallel:
    raise ConfigError(f'model_parallel={model_parallel} must divide the number of devices ({jax.device_count()})')
  return jax.device_count() // model_parallel


def build_model(config: T5Config, prompt_length: int, combine: str = 'prefix',
                loss: LossConfig | None = None, eos_id: int = 1) -> PromptModel:
  validation.check_positive(PROMPT_LENGTH=prompt_length)
  prompt = Prompt(length=prompt_length, embed_dim=config.emb_dim, combine=combine, eos_id=eos_id,
                  dtype=config.dtype)
  return PromptModel(config, prompt, loss=loss or LossConfig(), eos_id=eos_id)


def is_hf_checkpoint(path: str) -> bool:
  """A Hugging Face safetensors checkpoint (folder or file) rather than a T5X one."""
  if path.endswith('.safetensors') or path.endswith('.safetensors.index.json'):
    return True
  return os.path.isdir(path) and any(os.path.isfile(os.path.join(path, f)) for f in _HF_FILES)


def frozen_abstract(model: PromptModel, feature_lengths: Mapping[str, int]) -> dict:
  """Unboxed ShapeDtypeStructs of the frozen params (everything but the prompt)."""
  boxed = model.init_abstract(1, feature_lengths['inputs'], feature_lengths['targets'])['params']
  return {k: v for k, v in nn.meta.unbox(boxed).items() if k != PROMPT_KEY}


def load_frozen(path: str, model: PromptModel, shardings: Any, feature_lengths: Mapping[str, int]) -> Any:
  """Reads the frozen T5 weights (T5X any format, or HF safetensors), checked against the model's shapes."""
  from jaxprompt.checkpoints import load_t5x_checkpoint  # pylint: disable=g-import-not-at-top
  expected = frozen_abstract(model, feature_lengths)
  dtype = model.config.param_dtype
  if is_hf_checkpoint(path):
    from jaxprompt.checkpoints.huggingface import load_hf_t5  # pylint: disable=g-import-not-at-top
    params, _ = load_hf_t5(path, config=model.config, dtype=dtype, shardings=shardings, expected_shapes=expected)
    return params
  return load_t5x_checkpoint(path, dtype=dtype, shardings=shardings, expected_shapes=expected,
                             scan_layers=model.config.scan_layers)


def build_runtime(config: T5Config, prompt_length: int, checkpoint_path: str, feature_lengths: Mapping[str, int],
                  *, optimizer: PromptOptimizer | None = None, combine: str = 'prefix',
                  loss: LossConfig | None = None, model_parallel: int = 1, num_microbatches: int = 1,
                  eos_id: int = 1) -> Runtime:
  """Model + mesh + partitioned steps + frozen weights loaded straight into their shards."""
  validation.check_positive(model_parallel=model_parallel, num_microbatches=num_microbatches)
  model = build_model(config, prompt_length, combine, loss, eos_id)
  mesh = partitioning.create_mesh(model_parallel)
  rules = partitioning.prompt_logical_axis_rules()
  steps = ShardedSteps(model, optimizer, mesh, rules, num_microbatches, feature_lengths['inputs'],
                       feature_lengths['targets'])
  frozen = load_frozen(checkpoint_path, model, steps.frozen_shardings, feature_lengths)
  return Runtime(config, model, mesh, rules, steps, frozen)


# ------------------------------------------------------------------------------------ prompt files


def npy_shape(path: str) -> tuple[int, ...]:
  """The shape in a .npy header, read without loading (or unpickling) the data."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if not tf.io.gfile.exists(path):
    raise PromptError(f'prompt file {path} does not exist')
  with tf.io.gfile.GFile(path, 'rb') as f:
    head = io.BytesIO(f.read(4096))
  try:
    version = np.lib.format.read_magic(head)
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    shape, _, _ = read_header(head)
  except Exception:  # pylint: disable=broad-except  (not a .npy: from_file below names the reason)
    initializers.from_file(path)(None, (1, 1))  # raises a PromptError naming the file
    raise PromptError(f'prompt file {path} has an unreadable .npy header') from None
  return tuple(shape)


def load_prompt(*, prompt_file: str | None, checkpoint: str | None, step: int | None,
                prompt_length: int | None, embed_dim: int) -> np.ndarray:
  """The float32 [P, d] prompt from a .npy file or a training checkpoint, checked against the model.

  `prompt_length` None takes the file's length; the embedding size must always match the model's.
  """
  if (prompt_file is None) == (checkpoint is None):
    raise ConfigError('give exactly one of --prompt_file (a .npy) or --checkpoint (a training MODEL_DIR or '
                      f'step dir); got prompt_file={prompt_file!r}, checkpoint={checkpoint!r}')
  if prompt_file is not None:
    prompt_file = os.fspath(prompt_file)
    shape = npy_shape(prompt_file)
    length = prompt_length if prompt_length is not None else (shape[0] if len(shape) == 2 else -1)
    if length <= 0:
      raise PromptError(f'prompt file {prompt_file} has shape {shape}; a prompt must be [length, embed]')
    return np.asarray(initializers.from_file(prompt_file)(None, (length, embed_dim)), np.float32)
  from jaxprompt.train.checkpoints import load_prompt_from_checkpoint  # pylint: disable=g-import-not-at-top
  array = load_prompt_from_checkpoint(checkpoint, step=step)
  wanted = (prompt_length if prompt_length is not None else array.shape[0], embed_dim)
  if array.shape != wanted:
    raise PromptError(f'checkpoint {checkpoint} holds a prompt of shape {array.shape} but the model needs '
                      f'{wanted} (PROMPT_LENGTH, embed)')
  return array


def format_shape(shape: Sequence[int]) -> str:
  return '[' + ', '.join(str(d) for d in shape) + ']'
