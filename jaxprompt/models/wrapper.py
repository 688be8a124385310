"""The model wrapper: a frozen network plus a tuning method, with their parameters kept in two trees.

`frozen` is the network's parameter tree (T5X names; never differentiated unless the method trains the
network); `trainable` is the method's tree (prompt tuning: `{'prompt': [length, embed]}`). The wrapper knows
neither the method (it calls the `Tuning` interface below) nor, beyond the encoder-decoder feature names of
`jaxprompt.models.features`, the family: the network comes from `network_for(config)`. Every function takes
(frozen, trainable, batch, ...) in that order, is pure in them and safe to `jax.jit`.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxprompt.errors import ConfigError
from jaxprompt.models import decoding, losses, scan
from jaxprompt.models.config import T5Config
from jaxprompt.models.features import TASK_FEATURE
from jaxprompt.models.hooks import Hooks
from jaxprompt.models.t5 import Transformer

Array = jax.Array
Params = Mapping[str, Any]


class Tuning(Protocol):
  """What the wrapper, the runtime, the train loop and the commands read of a tuning method
  (`jaxprompt.methods.base.Method` implements it)."""

  trains_network: bool  # the method trains the network's own weights: no frozen tree
  uses_dropout: bool  # the method has dropout of its own: a train step gives it an rng
  packing_slots: int  # encoder positions packing reserves in front of each example for the method's rows
  task_names: tuple[str, ...]  # a multi-task method's tasks in task-id order; () for one task

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


def network_for(config: T5Config) -> Transformer:
  """The network of a config's family (T5 encoder-decoder today; decoder-only / encoder-only join here)."""
  if isinstance(config, T5Config):
    return Transformer(config)
  raise ConfigError(f'no network family for config {type(config).__name__}')


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """t5x `EncoderDecoderModel` loss options. `reduction='sum'` is t5x's (summed over weighted tokens, then
  divided by `loss_normalizing_factor` if set); 'mean' divides by the number of weighted target tokens."""
  z_loss: float = 1e-4
  label_smoothing: float = 0.0
  loss_normalizing_factor: float | None = None
  reduction: str = 'sum'

  def __post_init__(self):
    if self.reduction not in ('sum', 'mean'):
      raise ConfigError(f"loss reduction must be 'sum' or 'mean', got {self.reduction!r}")


class TunedModel:
  """A frozen network and a tuning method (None: the plain network, e.g. to score a frozen model)."""

  def __init__(self, config: T5Config, method: Tuning | None = None, loss: LossConfig = LossConfig(), eos_id: int = 1):
    self.config = config
    self.method = method
    self.loss_config = loss
    self.eos_id = eos_id
    self.module = network_for(config)

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

  def init_abstract(self, batch_size: int = 1, input_length: int = 8, target_length: int = 4) -> dict:
    """Boxed abstract variables (ShapeDtypeStructs with logical axes) of the network; nothing allocated."""
    enc = jnp.ones((batch_size, input_length), jnp.int32)
    dec = jnp.ones((batch_size, target_length), jnp.int32)
    init = functools.partial(self.module.init, enable_dropout=False)
    return jax.eval_shape(init, jax.random.PRNGKey(0), enc, dec, dec)

  def init_params(self, rng: Array) -> Params:
    """Freshly initialised network parameters (its own initialisers), unboxed."""
    ones = jnp.ones((1, 4), jnp.int32)
    return nn.meta.unbox(self.module.init(rng, ones, ones, ones, enable_dropout=False))['params']

  # -- training -------------------------------------------------------------------------------------------
  def logits(self, frozen: Params, trainable: Params | None, batch: Mapping[str, Array],
             dropout_rng: Array | None = None) -> Array:
    """Teacher-forced logits [batch, target_length, vocab]; dropout on iff `dropout_rng` is given."""
    if dropout_rng is None:
      rngs, hook_rng = None, None
    else:
      network_rng, hook_rng = jax.random.split(dropout_rng)
      rngs = {'dropout': network_rng}
    return self.module.apply(self._variables(frozen,
                                             trainable), batch['encoder_input_tokens'], batch['decoder_input_tokens'],
                             batch['decoder_target_tokens'], encoder_segment_ids=batch.get('encoder_segment_ids'),
                             decoder_segment_ids=batch.get('decoder_segment_ids'), hooks=self._hooks(
                                 trainable, hook_rng,
                                 batch.get(TASK_FEATURE)), enable_dropout=dropout_rng is not None, rngs=rngs)

  def loss_fn(self, frozen: Params, trainable: Params | None, batch: Mapping[str, Array],
              dropout_rng: Array | None = None) -> tuple[Array, dict]:
    """(loss, metrics). Differentiate w.r.t. `trainable` alone: `jax.value_and_grad(loss_fn, argnums=1)`."""
    cfg = self.loss_config
    logits = self.logits(frozen, trainable, batch, dropout_rng)
    weights = batch.get('decoder_loss_weights')
    targets = batch['decoder_target_tokens']
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
    token_scores = losses.token_scores(logits, batch['decoder_target_tokens'], batch.get('decoder_loss_weights'))
    return token_scores if return_intermediates else jnp.sum(token_scores, -1)

  def encode(self, frozen: Params, trainable: Params | None, encoder_input_tokens: Array,
             task_ids: Array | None = None) -> tuple[Array, Array]:
    """(encoded [b, l', embed], valid [b, l']) with the method's hooks applied (`task_ids` [b]: each row's task,
    for a multi-task method)."""
    return self.module.apply(self._variables(frozen, trainable), encoder_input_tokens,
                             hooks=self._hooks(trainable,
                                               task_ids=task_ids), enable_dropout=False, method=Transformer.encode)

  def rank_classify(self, frozen: Params, trainable: Params | None, encoder_input_tokens: Array,
                    candidate_targets: Array, task_ids: Array | None = None) -> Array:
    """Scores every candidate target for every example, running the encoder (and each layer's cross-attention
    key / value projection) once per example.

    encoder_input_tokens [b, l]; candidate_targets [c, lt] (shared label set) or [b, c, lt], EOS-terminated,
    0-padded -> log-likelihoods [b, c]. `argmax(-1)` is the rank-classification prediction. An all-zero
    candidate row (padding a smaller label set up to c) scores 0; callers mask it.
    """
    hooks = self._hooks(trainable, task_ids=task_ids)
    encoded, valid = self.module.apply(self._variables(frozen, trainable), encoder_input_tokens, hooks=hooks,
                                       enable_dropout=False, method=Transformer.encode)
    batch = encoded.shape[0]
    if candidate_targets.ndim == 2:
      candidate_targets = jnp.broadcast_to(candidate_targets[None], (batch,) + candidate_targets.shape)
    num_candidates = candidate_targets.shape[1]
    targets = candidate_targets.reshape(batch * num_candidates, -1).astype(jnp.int32)
    inputs = jnp.pad(targets[:, :-1], ((0, 0), (1, 0)))  # Shift right; decoder BOS is 0.
    # `encoded` stays [b, ...]: cross-attention projects each example's keys / values once and serves its c
    # candidates' queries from them (query rows example-major, as the repeated mask below).
    valid = jnp.repeat(valid, num_candidates, axis=0)
    logits = self.module.apply(self._variables(frozen, trainable), encoded, valid, inputs, targets, hooks=hooks,
                               enable_dropout=False, method=Transformer.decode)
    scores = losses.sequence_scores(logits, targets, (targets > 0).astype(jnp.float32))
    return scores.reshape(batch, num_candidates)

  # -- decoding -------------------------------------------------------------------------------------------
  def _decoding_module(self, frozen: Params) -> tuple[Transformer, Params]:
    """The module and frozen params for incremental decoding.

    The KV cache is per layer, so a scanned model (`scan_layers=True`, large models) decodes with an unscanned
    twin: same weights, its `layers` axis split back into `layers_N` inside the traced function.
    """
    if not self.config.scan_layers:
      return self.module, frozen
    config = dataclasses.replace(self.config, scan_layers=False, remat_policy='none')
    return network_for(config), scan.unstack_layers(dict(frozen))

  def predict_batch(self, frozen: Params, trainable: Params | None, batch: Mapping[str, Array], *, method: str = 'beam',
                    num_decodes: int = 1, alpha: float = 0.6, temperature: float = 0.0, topk: int = 1,
                    topp: float = 0.0, rescale_log_probs: bool = True, rng: Array | None = None,
                    return_all_decodes: bool = False) -> tuple[Array, Array]:
    """Decodes targets of length `decoder_target_tokens.shape[1]`, as t5x's `predict_batch_with_aux`.

    method 'beam' (t5x's default decode_fn) or 'sample' (temperature sampling; temperature 0 = greedy).
    Returns (decodes [b, len] and scores [b]) for the best decode, or all decodes [b, n, len] / [b, n]
    (best last) when `return_all_decodes`.
    """
    variables = self._variables(frozen, trainable)
    module, params = self._decoding_module(variables['params'])
    variables = {'params': params}
    hooks = self._hooks(trainable, task_ids=batch.get(TASK_FEATURE))
    inputs = batch['encoder_input_tokens']
    target_shape = batch['decoder_target_tokens'].shape
    max_len = target_shape[1]
    cache_shapes = jax.eval_shape(lambda: module.apply(
        variables, jnp.ones((target_shape[0], 1, self.config.emb_dim), self.config.dtype),
        jnp.ones((target_shape[0], 1), bool), jnp.ones(target_shape, jnp.int32), jnp.ones(target_shape, jnp.int32),
        hooks=hooks, enable_dropout=False, decode=True, mutable=['cache'], method=Transformer.decode)[1]['cache'])
    cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), cache_shapes)
    encoded, valid = module.apply(variables, inputs, hooks=hooks, enable_dropout=False, method=Transformer.encode)
    encoded = decoding.flat_batch_beam_expand(encoded, num_decodes)
    valid = decoding.flat_batch_beam_expand(valid, num_decodes)

    # `hooks` stay as they are, not beam-expanded: hook data is batch-independent ([p, ...], [layers, p, ...]) or
    # per example ([layers, b, p, ...]), and the attention repeats per-example rows for each of an example's
    # beams, as the flat beam layout lays them out.

    def tokens_to_logits(state: decoding.DecodingState):
      logits, new_vars = module.apply({**variables, 'cache': state.cache}, encoded, valid, state.cur_token,
                                      state.cur_token, hooks=hooks, enable_dropout=False, decode=True,
                                      max_decode_length=max_len, mutable=['cache'], method=Transformer.decode)
      return logits[:, 0], new_vars['cache']

    decoder_prompt = jnp.zeros(target_shape, jnp.int32)
    if method == 'beam':
      decodes, scores = decoding.beam_search(decoder_prompt, cache, tokens_to_logits, eos_id=self.eos_id,
                                             num_decodes=num_decodes, alpha=alpha)
    elif method == 'sample':
      decodes, scores = decoding.temperature_sample(decoder_prompt, cache, tokens_to_logits, eos_id=self.eos_id,
                                                    decode_rng=rng, num_decodes=num_decodes, temperature=temperature,
                                                    topk=topk, topp=topp, rescale_log_probs=rescale_log_probs)
    else:
      raise ConfigError(f"decoding method must be 'beam' or 'sample', got {method!r}")
    if return_all_decodes:
      return decodes, scores
    return decodes[:, -1, :], scores[:, -1]
