"""The encoder-decoder family (T5): t5x's `EncoderDecoderModel` over `jaxprompt.models.t5.Transformer`.

Batches are seqio `EncDecFeatureConverter` features (`jaxprompt.models.features.FEATURES`): the loss sits on the
decoder targets; rank classification runs the encoder once per example and serves every label candidate's
decoder pass from it; decoding runs the encoder once and the decoder token by token from a KV cache.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from jaxprompt.errors import ConfigError
from jaxprompt.models import decoding, losses
from jaxprompt.models.base import Array, BaseModel, ModelConfig, Params, fresh_params
from jaxprompt.models.config import T5Config
from jaxprompt.models.features import FEATURES, TASK_FEATURE
from jaxprompt.models.t5 import Transformer


class EncoderDecoderModel(BaseModel):
  """A T5 network and a tuning method."""

  FEATURES = FEATURES
  DECODE_FEATURES = ('encoder_input_tokens', 'decoder_target_tokens', TASK_FEATURE)

  @classmethod
  def network(cls, config: ModelConfig) -> Transformer:
    if not isinstance(config, T5Config):
      raise ConfigError(f'the encoder-decoder family runs a T5Config, not {type(config).__name__}')
    return Transformer(config)

  def feature_widths(self, input_length: int, target_length: int) -> dict[str, int]:
    return {k: input_length if k == 'encoder_input_tokens' else target_length for k in self.FEATURES}

  def init_abstract(self, batch_size: int = 1, input_length: int = 8, target_length: int = 4) -> dict:
    """Boxed abstract variables (ShapeDtypeStructs with logical axes) of the network; nothing allocated."""
    enc = jnp.ones((batch_size, input_length), jnp.int32)
    dec = jnp.ones((batch_size, target_length), jnp.int32)
    init = functools.partial(self.module.init, enable_dropout=False)
    return jax.eval_shape(init, jax.random.PRNGKey(0), enc, dec, dec)

  def init_params(self, rng: Array) -> Params:
    """Freshly initialised network parameters (its own initialisers), unboxed."""
    ones = jnp.ones((1, 4), jnp.int32)
    return fresh_params(self.module, rng, ones, ones, ones)

  # -- training -------------------------------------------------------------------------------------------
  def logits(self, frozen: Params, trainable: Params | None, batch: Mapping[str, Array],
             dropout_rng: Array | None = None) -> Array:
    """Teacher-forced decoder logits [batch, target_length, vocab]; dropout on iff `dropout_rng` is given."""
    rngs, hook_rng = self._split_rng(dropout_rng)
    return self.module.apply(self._variables(frozen,
                                             trainable), batch['encoder_input_tokens'], batch['decoder_input_tokens'],
                             batch['decoder_target_tokens'], encoder_segment_ids=batch.get('encoder_segment_ids'),
                             decoder_segment_ids=batch.get('decoder_segment_ids'), hooks=self._hooks(
                                 trainable, hook_rng,
                                 batch.get(TASK_FEATURE)), enable_dropout=dropout_rng is not None, rngs=rngs)

  def targets(self, batch: Mapping[str, Array]) -> tuple[Array, Array | None]:
    return batch['decoder_target_tokens'], batch.get('decoder_loss_weights')

  def encode(self, frozen: Params, trainable: Params | None, encoder_input_tokens: Array,
             task_ids: Array | None = None) -> tuple[Array, Array]:
    """(encoded [b, l', embed], valid [b, l']) with the method's hooks applied (`task_ids` [b]: each row's task,
    for a multi-task method)."""
    return self.module.apply(self._variables(frozen, trainable), encoder_input_tokens,
                             hooks=self._hooks(trainable,
                                               task_ids=task_ids), enable_dropout=False, method=Transformer.encode)

  def rank_classify(self, frozen: Params, trainable: Params | None, batch: Mapping[str, Array],
                    candidate_targets: Array) -> Array:
    """Scores every candidate target for every example, running the encoder (and each layer's cross-attention
    key / value projection) once per example. batch: `encoder_input_tokens` [b, l] (and `task_ids`)."""
    encoder_input_tokens = batch['encoder_input_tokens']
    hooks = self._hooks(trainable, task_ids=batch.get(TASK_FEATURE))
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
  def predict_batch(self, frozen: Params, trainable: Params | None, batch: Mapping[str, Array], *, method: str = 'beam',
                    num_decodes: int = 1, alpha: float = 0.6, temperature: float = 0.0, topk: int = 1,
                    topp: float = 0.0, rescale_log_probs: bool = True, rng: Array | None = None,
                    return_all_decodes: bool = False) -> tuple[Array, Array]:
    """Decodes from the encoder's output; see `BaseModel.predict_batch`."""
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
