"""A run whose rows cannot fit the model's position table fails at start-up, naming the lengths and the limit.

A model with a table of learned positions (GPT-2: `n_positions` rows, `ModelConfig.position_limit`) has nothing to
look up past its last row: a gather would silently clip to it (and a one-hot lookup give zeros). A row uses the
method's prompt positions (rows an input hook inserts in front, or a K/V prefix the tokens' positions start after)
and then the task's widest feature (`BaseModel.feature_widths`: a causal LM's inputs + targets); decoding uses no
more (its prompt and decoded tokens are the same stream). Models without a limit (T5's relative positions, rotary
positions) are not measured. The prompt's positions are measured on abstract values through the method's own
hooks, so no method or family is named here.
"""
from __future__ import annotations

from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxprompt.errors import ConfigError
from jaxprompt.models.base import BaseModel
from jaxprompt.models.hooks import STACK_OF_KIND


def prompt_positions(model: BaseModel, width: int) -> int:
  """Positions the method puts in front of a row of `width` tokens of the model's input stack: the rows its input
  hook inserts plus the K/V prefix rows of that stack's self-attention (0 without a method)."""
  method, config = model.method, model.config
  if method is None or method.trains_network:
    return 0
  stack = config.input_stack
  kind = next((k for k in config.attention_kinds if STACK_OF_KIND[k] == stack and k != 'cross'), None)
  trainable = nn.meta.unbox(method.abstract(model.init_abstract(1, 1, 1)['params']))

  def measure(trainable):
    hooks = method.hooks(trainable, task_ids=jnp.zeros((1,), jnp.int32) if method.task_names else None)
    out = {}
    if hooks.inputs is not None:
      out['inputs'] = hooks.inputs(jnp.zeros((1, width, config.emb_dim), config.dtype), jnp.zeros(
          (1, width), jnp.int32), None, valid=jnp.ones((1, width), bool), stack=stack, deterministic=True)[0]
    layers = hooks.layers(stack)
    prefix = None if layers is None else jax.tree.map(lambda a: a[0], layers).attention_prefix(0, kind)
    if prefix is not None:
      out['prefix'] = prefix.key
    return out

  shapes = jax.eval_shape(measure, trainable)
  inserted = shapes['inputs'].shape[1] - width if 'inputs' in shapes else 0
  return inserted + (shapes['prefix'].shape[1] if 'prefix' in shapes else 0)


def check_positions(model: BaseModel, feature_lengths: Mapping[str, int]) -> None:
  """Refuses (one ConfigError) task lengths whose rows, with the method's prompt, need more positions than the
  model's `position_limit`."""
  limit = model.config.position_limit
  if limit is None:
    return
  inputs, targets = int(feature_lengths['inputs']), int(feature_lengths['targets'])
  width = max(model.feature_widths(inputs, targets).values())
  prompt = prompt_positions(model, width)
  if prompt + width > limit:
    raise ConfigError(
        f'a row needs {prompt + width} positions (a prompt of {prompt} + {width} for TASK_FEATURE_LENGTHS '
        f'inputs {inputs}, targets {targets}) but this model has {limit} (its learned position table, '
        f"GPT-2's n_positions): lower TASK_FEATURE_LENGTHS or the prompt length")
