"""What every model family is to the rest of jaxprompt: one small interface (t5x's `BaseTransformerModel`).

A model is a frozen network plus a tuning method, with their parameters kept in two trees: `frozen` is the
network's (never differentiated unless the method trains the network), `trainable` the method's. Every function
takes (frozen, trainable, batch, ...) in that order, is pure in them and safe to `jax.jit`. A family
(`EncoderDecoderModel` for T5, `DecoderOnlyModel` for causal LMs) says which batch features it reads, where its
loss sits, how it scores label candidates and how it decodes; `train/`, `eval/`, `commands/` and `methods/` only
ever call this interface, and `jaxprompt.models.families.build_model` picks the family from the config.
"""
from __future__ import annotations

import abc
import dataclasses
import functools
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxprompt.errors import ConfigError
from jaxprompt.models import losses, scan
from jaxprompt.models.features import TASK_FEATURE
from jaxprompt.models.heads import HeadConfig
from jaxprompt.models.hooks import AttentionKind, Hooks, Stack
from jaxprompt.models.task_heads import TaskHeads

Array = jax.Array
Params = Mapping[str, Any]


def fresh_params(module: nn.Module, rng: Array, *inputs: Array) -> Params:
  """The params `module.init(rng, *inputs)` makes (dropout off), unboxed. Initialised under one `jax.jit`: one
  compile for the whole network, not one per op of every initialiser."""
  init = jax.jit(functools.partial(module.init, enable_dropout=False))
  return nn.meta.unbox(init(rng, *inputs))['params']


class ModelConfig(Protocol):
  """What methods, partitioning and the commands may read of any family's config (T5Config, DecoderConfig, ...).

  `input_stack` is the stack whose embedded tokens an input hook sees (T5: 'encoder'; a causal LM: 'decoder');
  `stack_depth(stack)` its number of layers; `attention_kinds` the attentions a K/V prefix may join;
  `num_kv_heads` the heads of a layer's keys / values (fewer than `num_heads` with grouped-query attention),
  which is what a K/V prefix row holds. `relative_position_bias`: the attentions add T5's relative-position bias,
  which measures a K/V prefix's distance from the start of the row (not of a packed example).
  `position_limit`: the positions a row may use (prompt + tokens; GPT-2's learned table), None for no limit.
  """
  family: ClassVar[str]
  vocab_size: int
  emb_dim: int
  num_heads: int
  head_dim: int
  dropout_rate: float
  dtype: Any
  param_dtype: Any
  scan_layers: bool

  @property
  def input_stack(self) -> Stack:
    ...

  @property
  def num_kv_heads(self) -> int:
    ...

  @property
  def attention_kinds(self) -> tuple[AttentionKind, ...]:
    ...

  @property
  def relative_position_bias(self) -> bool:
    ...

  @property
  def position_limit(self) -> int | None:
    ...

  def stack_depth(self, stack: Stack) -> int:
    ...


class OneStackConfig:
  """The `ModelConfig` properties of a family with one stack of `num_layers` layers (`STACK`: 'decoder' for causal
  LMs, 'encoder' for BERT): the inputs enter it and its self-attention is the one attention a prefix joins."""
  STACK: ClassVar[Stack]
  FAMILY_NAME: ClassVar[str]  # in errors: 'a decoder-only model'
  num_layers: int

  @property
  def input_stack(self) -> Stack:
    """The stack whose embedded inputs an input hook sees: the only one."""
    return self.STACK

  @property
  def attention_kinds(self) -> tuple[AttentionKind, ...]:
    return (f'{self.STACK}_self',)

  def replace(self, **changes):
    """A copy with `changes` (the config classes are frozen dataclasses)."""
    return dataclasses.replace(self, **changes)

  @property
  def relative_position_bias(self) -> bool:
    """No relative bias: a token's position is its own (a packed example's restart, after a K/V prefix)."""
    return False

  def stack_depth(self, stack: Stack) -> int:
    if stack != self.STACK:
      raise ConfigError(f"{self.FAMILY_NAME} has one stack, '{self.STACK}'; there is no {stack!r} stack")
    return self.num_layers


class Tuning(Protocol):
  """What the models, the runtime, the train loop and the commands read of a tuning method
  (`jaxprompt.methods.base.Method` implements it)."""

  trains_network: bool  # the method trains the network's own weights: no frozen tree
  uses_dropout: bool  # the method has dropout of its own: a train step gives it an rng
  packing_slots: int  # input positions packing reserves in front of each example for the method's rows
  task_names: tuple[str, ...]  # a multi-task method's tasks in task-id order; () for one task
  # The task head trained beside the method (the encoder-only family's; its parameters are trainable['head']), or
  # one head per task (`models.task_heads.TaskHeads`: trainable['head'][<task>]); None for the families that predict
  # text.
  head: HeadConfig | TaskHeads | None

  def init(self, rng: Array, frozen: Params) -> Params:
    ...

  def abstract(self, network: Params) -> Params:
    ...

  def network_params(self, frozen: Params, trainable: Params) -> Params:
    ...

  def hooks(self, trainable: Params, *, deterministic: bool = True, rng: Array | None = None,
            task_ids: Array | None = None) -> Hooks:
    ...

  def inference(self, trainable: Params) -> tuple[Tuning, Params]:
    ...

  def numpy_copy(self, trainable: Params) -> Mapping[str, Any] | None:
    ...


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """t5x's loss options. `reduction='sum'` is t5x's (summed over weighted tokens, then divided by
  `loss_normalizing_factor` if set); 'mean' divides by the number of weighted target tokens."""
  z_loss: float = 1e-4
  label_smoothing: float = 0.0
  loss_normalizing_factor: float | None = None
  reduction: str = 'sum'

  def __post_init__(self):
    if self.reduction not in ('sum', 'mean'):
      raise ConfigError(f"loss reduction must be 'sum' or 'mean', got {self.reduction!r}")


class BaseModel(abc.ABC):
  """A frozen network of one family and a tuning method (None: the plain network, e.g. to score a frozen model).

  Subclasses set `FEATURES` (the batch features a training batch carries) and `DECODE_FEATURES` (what
  `predict_batch` reads: the inputs, the targets' width as the decode length, and `task_ids`), and implement the
  network-specific parts; the loss, scores and the method plumbing live here once.
  """

  FEATURES: ClassVar[tuple[str, ...]] = ()
  DECODE_FEATURES: ClassVar[tuple[str, ...]] = ()

  def __init__(self, config: ModelConfig, method: Tuning | None = None, loss: LossConfig = LossConfig(),
               eos_id: int = 1):
    self.config = config
    self.method = method
    self.loss_config = loss
    self.eos_id = eos_id
    self.module = self.network(config)

  @classmethod
  @abc.abstractmethod
  def network(cls, config: ModelConfig) -> nn.Module:
    """The family's Flax network for `config`."""

  # -- parameters ------------------------------------------------------------------------------------------
  def _variables(self, frozen: Params, trainable: Params | None) -> dict:
    if self.method is None:
      return {'params': frozen}
    if trainable is None:
      raise ConfigError('this model has a tuning method but no trainable parameters were given')
    return {'params': self.method.network_params(frozen, trainable)}

  def _hooks(self, trainable: Params | None, rng: Array | None = None, task_ids: Array | None = None) -> Hooks | None:
    """The method's hooks for one pass, given each row's task id [b] (None: the batch has none); a multi-task
    method (`task_names`) needs them."""
    if self.method is None:
      return None
    tasks = self.method.task_names
    if tasks and task_ids is None:
      raise ConfigError(f"{type(self.method).__name__} serves tasks {list(tasks)}: every batch needs a "
                        f"'{TASK_FEATURE}' feature [batch] naming each row's task")
    return self.method.hooks(trainable, deterministic=rng is None, rng=rng, task_ids=task_ids)

  @staticmethod
  def _split_rng(dropout_rng: Array | None) -> tuple[dict | None, Array | None]:
    """(the network's rngs, the method's rng) of one pass; both None without dropout."""
    if dropout_rng is None:
      return None, None
    network_rng, hook_rng = jax.random.split(dropout_rng)
    return {'dropout': network_rng}, hook_rng

  def _decoding_module(self, frozen: Params) -> tuple[nn.Module, Params]:
    """The module and frozen params for incremental decoding.

    The KV cache is per layer, so a scanned model (`scan_layers=True`, large models) decodes with an unscanned
    twin: same weights, its `layers` axis split back into `layers_N` inside the traced function.
    """
    if not self.config.scan_layers:
      return self.module, frozen
    config = dataclasses.replace(self.config, scan_layers=False, remat_policy='none')
    return self.network(config), scan.unstack_layers(dict(frozen))

  @abc.abstractmethod
  def feature_widths(self, input_length: int, target_length: int) -> dict[str, int]:
    """The width of each training feature (`FEATURES`) for a task's feature lengths (TASK_FEATURE_LENGTHS)."""

  @abc.abstractmethod
  def init_abstract(self, batch_size: int = 1, input_length: int = 8, target_length: int = 4) -> dict:
    """Boxed abstract variables (ShapeDtypeStructs with logical axes) of the network; nothing allocated.
    `input_length` / `target_length` are the task's feature lengths (TASK_FEATURE_LENGTHS)."""

  @abc.abstractmethod
  def init_params(self, rng: Array) -> Params:
    """Freshly initialised network parameters (its own initialisers), unboxed."""

  # -- training -------------------------------------------------------------------------------------------
  @abc.abstractmethod
  def logits(self, frozen: Params, trainable: Params | None, batch: Mapping[str, Array],
             dropout_rng: Array | None = None) -> Array:
    """Teacher-forced logits [batch, length, vocab], position-aligned with `targets(batch)`; dropout on iff
    `dropout_rng` is given."""

  @abc.abstractmethod
  def targets(self, batch: Mapping[str, Array]) -> tuple[Array, Array | None]:
    """(target tokens [b, l], loss weights [b, l] or None for all) that `logits` predicts."""

  def loss_fn(self, frozen: Params, trainable: Params | None, batch: Mapping[str, Array],
              dropout_rng: Array | None = None) -> tuple[Array, dict]:
    """(loss, metrics). Differentiate w.r.t. `trainable` alone: `jax.value_and_grad(loss_fn, argnums=1)`."""
    cfg = self.loss_config
    logits = self.logits(frozen, trainable, batch, dropout_rng)
    targets, weights = self.targets(batch)
    loss, z_loss, weight_sum = losses.compute_weighted_cross_entropy(logits, targets, weights, cfg.label_smoothing,
                                                                     cfg.z_loss, cfg.loss_normalizing_factor)
    if cfg.reduction == 'mean':
      loss, z_loss = loss / weight_sum, z_loss / weight_sum
    if weights is None:
      weights = jnp.ones(targets.shape, jnp.float32)
    correct = (jnp.argmax(logits, -1) == targets) * weights
    metrics = {
        'loss': loss, 'z_loss': z_loss, 'weight_sum': weight_sum,
        'token_accuracy': jnp.sum(correct) / jnp.maximum(weight_sum, 1.0)
    }
    return loss, metrics

  # -- scoring --------------------------------------------------------------------------------------------
  def score_batch(self, frozen: Params, trainable: Params | None, batch: Mapping[str, Array],
                  return_intermediates: bool = False) -> Array:
    """Log-likelihood of each example's target: [batch] (or per-token [batch, length] if requested)."""
    logits = self.logits(frozen, trainable, batch)
    targets, weights = self.targets(batch)
    token_scores = losses.token_scores(logits, targets, weights)
    return token_scores if return_intermediates else jnp.sum(token_scores, -1)

  @abc.abstractmethod
  def rank_classify(self, frozen: Params, trainable: Params | None, batch: Mapping[str, Array],
                    candidate_targets: Array) -> Array:
    """Log-likelihood [b, c] of every candidate target for every example of an inference `batch` (its input
    features and, for a multi-task method, `task_ids`). candidate_targets [c, lt] (a shared label set) or
    [b, c, lt], EOS-terminated and 0-padded. An all-zero candidate row (padding a smaller label set up to c)
    scores 0; callers mask it. `argmax(-1)` is the rank-classification prediction."""

  @abc.abstractmethod
  def predict_batch(self, frozen: Params, trainable: Params | None, batch: Mapping[str, Array], *, method: str = 'beam',
                    num_decodes: int = 1, alpha: float = 0.6, temperature: float = 0.0, topk: int = 1,
                    topp: float = 0.0, rescale_log_probs: bool = True, rng: Array | None = None,
                    return_all_decodes: bool = False) -> tuple[Array, Array]:
    """Decodes targets of length `decoder_target_tokens.shape[1]`, as t5x's `predict_batch_with_aux`.

    method 'beam' (t5x's default decode_fn) or 'sample' (temperature sampling; temperature 0 = greedy).
    Returns (decodes [b, len] and scores [b]) for the best decode, or all decodes [b, n, len] / [b, n]
    (best last) when `return_all_decodes`.
    """
