"""The prompt-tuning model wrapper: a frozen T5 plus a soft prompt, with params kept in two separate trees.

`frozen` is the T5X parameter tree (never differentiated); `prompt` is `{'prompt': [length, embed]}` (the
`params/prompt` subtree of the combined model). Every method is a pure function of (frozen, prompt, batch),
safe to `jax.jit`. Batches are seqio `EncDecFeatureConverter` features: `encoder_input_tokens`,
`decoder_input_tokens`, `decoder_target_tokens`, `decoder_loss_weights` (all [batch, length]).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from jaxprompt.errors import ConfigError
from jaxprompt.models import decoding, losses, scan
from jaxprompt.models.config import T5Config
from jaxprompt.models.t5 import Transformer
from jaxprompt.methods.prompt_tuning import Prompt

Array = jax.Array
Params = Mapping[str, Any]
PROMPT_KEY = 'prompt'


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


class PromptModel:
  """A frozen `Transformer` with a `Prompt` in front of its encoder (or no prompt: `prompt=None`)."""

  def __init__(self, config: T5Config, prompt: Prompt | None, loss: LossConfig = LossConfig(), eos_id: int = 1):
    self.config = config
    self.prompt = prompt
    self.loss_config = loss
    self.eos_id = eos_id
    self.module = Transformer(config, prompt=prompt)

  # -- parameters ------------------------------------------------------------------------------------------
  def _variables(self, frozen: Params, prompt: Params | None) -> dict:
    params = dict(frozen)
    if self.prompt is not None:
      if prompt is None:
        raise ConfigError('this model has a prompt module but no prompt parameters were given')
      params[PROMPT_KEY] = prompt
    return {'params': params}

  def init_abstract(self, batch_size: int = 1, input_length: int = 8, target_length: int = 4) -> dict:
    """Boxed abstract variables (ShapeDtypeStructs with logical axes) of the combined model; nothing allocated."""
    enc = jnp.ones((batch_size, input_length), jnp.int32)
    dec = jnp.ones((batch_size, target_length), jnp.int32)
    init = functools.partial(self.module.init, enable_dropout=False)
    return jax.eval_shape(init, jax.random.PRNGKey(0), enc, dec, dec)

  def init_prompt(self, rng: Array, frozen: Params, initializer=None) -> dict:
    """Prompt params `{'prompt': [length, embed]}` from `initializer(rng, shape, embedding)` (see
    `jaxprompt.methods.initializers`); default: the module's own `prompt_init`."""
    if self.prompt is None:
      raise ConfigError('init_prompt called on a model without a prompt')
    shape = (self.prompt.length, self.prompt.embed_dim)
    if initializer is None:
      value = self.prompt.prompt_init(rng, shape, self.prompt.param_dtype)
    else:
      value = initializer(rng, shape, frozen['token_embedder']['embedding'])
    value = jnp.asarray(value, self.prompt.param_dtype)
    if value.shape != shape:
      raise ConfigError(f'prompt initializer returned shape {value.shape}, expected {shape}')
    return {'prompt': value}

  # -- training -------------------------------------------------------------------------------------------
  def logits(self, frozen: Params, prompt: Params | None, batch: Mapping[str, Array],
             dropout_rng: Array | None = None) -> Array:
    """Teacher-forced logits [batch, target_length, vocab]; dropout on iff `dropout_rng` is given."""
    rngs = {'dropout': dropout_rng} if dropout_rng is not None else None
    return self.module.apply(self._variables(frozen, prompt), batch['encoder_input_tokens'],
                             batch['decoder_input_tokens'], batch['decoder_target_tokens'],
                             encoder_segment_ids=batch.get('encoder_segment_ids'),
                             decoder_segment_ids=batch.get('decoder_segment_ids'),
                             enable_dropout=dropout_rng is not None, rngs=rngs)

  def loss_fn(self, prompt: Params | None, frozen: Params, batch: Mapping[str, Array],
              dropout_rng: Array | None = None) -> tuple[Array, dict]:
    """(loss, metrics). The prompt comes first so `jax.value_and_grad(loss_fn)` differentiates only it."""
    cfg = self.loss_config
    logits = self.logits(frozen, prompt, batch, dropout_rng)
    weights = batch.get('decoder_loss_weights')
    targets = batch['decoder_target_tokens']
    loss, z_loss, weight_sum = losses.compute_weighted_cross_entropy(
        logits, targets, weights, cfg.label_smoothing, cfg.z_loss, cfg.loss_normalizing_factor)
    if cfg.reduction == 'mean':
      loss, z_loss = loss / weight_sum, z_loss / weight_sum
    if weights is None:
      weights = jnp.ones(targets.shape, jnp.float32)
    correct = (jnp.argmax(logits, -1) == targets) * weights
    metrics = {'loss': loss, 'z_loss': z_loss, 'weight_sum': weight_sum,
               'token_accuracy': jnp.sum(correct) / jnp.maximum(weight_sum, 1.0)}
    return loss, metrics

  # -- scoring --------------------------------------------------------------------------------------------
  def score_batch(self, frozen: Params, prompt: Params | None, batch: Mapping[str, Array],
                  return_intermediates: bool = False) -> Array:
    """Log-likelihood of each example's target: [batch] (or per-token [batch, length] if requested)."""
    logits = self.logits(frozen, prompt, batch)
    token_scores = losses.token_scores(logits, batch['decoder_target_tokens'], batch.get('decoder_loss_weights'))
    return token_scores if return_intermediates else jnp.sum(token_scores, -1)

  def encode(self, frozen: Params, prompt: Params | None, encoder_input_tokens: Array) -> tuple[Array, Array]:
    """(encoded [b, l', embed], valid [b, l']) with the prompt inserted."""
    return self.module.apply(self._variables(frozen, prompt), encoder_input_tokens, enable_dropout=False,
                             method=Transformer.encode)

  def rank_classify(self, frozen: Params, prompt: Params | None, encoder_input_tokens: Array,
                    candidate_targets: Array) -> Array:
    """Scores every candidate target for every example, running the encoder once per example.

    encoder_input_tokens [b, l]; candidate_targets [c, lt] (shared label set) or [b, c, lt], EOS-terminated,
    0-padded -> log-likelihoods [b, c]. `argmax(-1)` is the rank-classification prediction.
    """
    encoded, valid = self.encode(frozen, prompt, encoder_input_tokens)
    batch = encoded.shape[0]
    if candidate_targets.ndim == 2:
      candidate_targets = jnp.broadcast_to(candidate_targets[None], (batch,) + candidate_targets.shape)
    num_candidates = candidate_targets.shape[1]
    targets = candidate_targets.reshape(batch * num_candidates, -1).astype(jnp.int32)
    inputs = jnp.pad(targets[:, :-1], ((0, 0), (1, 0)))  # Shift right; decoder BOS is 0.
    encoded = jnp.repeat(encoded, num_candidates, axis=0)
    valid = jnp.repeat(valid, num_candidates, axis=0)
    logits = self.module.apply(self._variables(frozen, prompt), encoded, valid, inputs, targets,
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
    return Transformer(config, prompt=self.prompt), scan.unstack_layers(dict(frozen))

  def predict_batch(self, frozen: Params, prompt: Params | None, batch: Mapping[str, Array], *,
                    method: str = 'beam', num_decodes: int = 1, alpha: float = 0.6, temperature: float = 0.0,
                    topk: int = 1, topp: float = 0.0, rescale_log_probs: bool = True, rng: Array | None = None,
                    return_all_decodes: bool = False) -> tuple[Array, Array]:
    """Decodes targets of length `decoder_target_tokens.shape[1]`, as t5x's `predict_batch_with_aux`.

    method 'beam' (t5x's default decode_fn) or 'sample' (temperature sampling; temperature 0 = greedy).
    Returns (decodes [b, len] and scores [b]) for the best decode, or all decodes [b, n, len] / [b, n]
    (best last) when `return_all_decodes`.
    """
    module, frozen = self._decoding_module(frozen)
    variables = self._variables(frozen, prompt)
    inputs = batch['encoder_input_tokens']
    target_shape = batch['decoder_target_tokens'].shape
    max_len = target_shape[1]
    cache_shapes = jax.eval_shape(
        lambda: module.apply(variables, jnp.ones((target_shape[0], 1, self.config.emb_dim), self.config.dtype),
                             jnp.ones((target_shape[0], 1), bool), jnp.ones(target_shape, jnp.int32),
                             jnp.ones(target_shape, jnp.int32), enable_dropout=False, decode=True,
                             mutable=['cache'], method=Transformer.decode)[1]['cache'])
    cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), cache_shapes)
    encoded, valid = module.apply(variables, inputs, enable_dropout=False, method=Transformer.encode)
    encoded = decoding.flat_batch_beam_expand(encoded, num_decodes)
    valid = decoding.flat_batch_beam_expand(valid, num_decodes)

    def tokens_to_logits(state: decoding.DecodingState):
      logits, new_vars = module.apply({**variables, 'cache': state.cache}, encoded, valid, state.cur_token,
                                      state.cur_token, enable_dropout=False, decode=True,
                                      max_decode_length=max_len, mutable=['cache'], method=Transformer.decode)
      return logits[:, 0], new_vars['cache']

    prompt_inputs = jnp.zeros(target_shape, jnp.int32)
    if method == 'beam':
      decodes, scores = decoding.beam_search(prompt_inputs, cache, tokens_to_logits, eos_id=self.eos_id,
                                             num_decodes=num_decodes, alpha=alpha)
    elif method == 'sample':
      decodes, scores = decoding.temperature_sample(prompt_inputs, cache, tokens_to_logits, eos_id=self.eos_id,
                                                    decode_rng=rng, num_decodes=num_decodes,
                                                    temperature=temperature, topk=topk, topp=topp,
                                                    rescale_log_probs=rescale_log_probs)
    else:
      raise ConfigError(f"decoding method must be 'beam' or 'sample', got {method!r}")
    if return_all_decodes:
      return decodes, scores
    return decodes[:, -1, :], scores[:, -1]
