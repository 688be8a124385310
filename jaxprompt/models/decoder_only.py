"""The decoder-only family (Llama, Mistral, Qwen2, GPT-2): t5x's `DecoderOnlyModel` over `CausalTransformer`.

Batches are one token stream per row (`jaxprompt.models.features.CAUSAL_FEATURES`): `decoder_input_tokens` with
its padding mask `decoder_input_mask` (token id 0 is a real token in these vocabularies), the stream shifted left
as `decoder_target_tokens`, and `decoder_loss_weights` on the targets only. Whatever an input hook inserts in
front (a prompt) gets no logits here: `logits` is position-aligned with the tokens.

Rank classification and decoding read only the inputs (`decoder_input_tokens` / `decoder_input_mask` of the
inputs alone, left- or right-padded): the inputs and the method's prompt run once per example into a KV cache,
and every label candidate, or every decoded token, continues from it.

A prefix prompt (prompt tuning, P-tuning v1) runs once per batch rather than once per row, in training, scoring,
rank classification and decoding alike (`jaxprompt.models.prompt_once`): its keys / values, computed at batch 1,
serve every row as a K/V prefix; a prompt bank's (or multi-task prompts') mixed-task batch runs every task's prompt
once and each row takes its task's. `prompt_once=False` keeps the naive path (the prompt inserted in every row),
the reference of the tests and the benchmark; results are equal to float tolerance.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from jax import lax

from jaxprompt.errors import ConfigError
from jaxprompt.models import decoding, losses, prompt_once
from jaxprompt.models.base import Array, BaseModel, LossConfig, ModelConfig, Params, Tuning, fresh_params
from jaxprompt.models.causal_lm import CausalTransformer
from jaxprompt.models.decoder_config import DecoderConfig
from jaxprompt.models.features import CAUSAL_FEATURES, TASK_FEATURE
from jaxprompt.models.hooks import Hooks

INPUT_MASK = 'decoder_input_mask'


def right_align(tokens: Array, valid: Array) -> tuple[Array, Array]:
  """Moves each row's real tokens to its end (left padding). tokens, valid [b, l] -> the same, realigned.

  Rows may come right-padded (the data pipeline's layout) or already left-padded; real tokens keep their order.
  """
  length = tokens.shape[1]
  real = jnp.sum(valid, axis=1, dtype=jnp.int32)
  last = jnp.max(jnp.where(valid, jnp.arange(length)[None], -1), axis=1)
  shift = (length - 1 - last) % length  # rows with no real token stay put
  source = (jnp.arange(length)[None] - shift[:, None]) % length
  tokens = jnp.take_along_axis(tokens, source, axis=1)
  valid = jnp.arange(length)[None] >= (length - real)[:, None]
  return jnp.where(valid, tokens, 0), valid


class DecoderOnlyModel(BaseModel):
  """A causal LM network and a tuning method."""

  FEATURES = CAUSAL_FEATURES
  DECODE_FEATURES = ('decoder_input_tokens', INPUT_MASK, 'decoder_target_tokens', TASK_FEATURE)

  def __init__(self, config: ModelConfig, method: Tuning | None = None, loss: LossConfig | None = None, eos_id: int = 1,
               *, prompt_once: bool = True):
    """prompt_once: a prefix prompt runs once per batch (False: inserted in every row, the naive path)."""
    super().__init__(config, method, loss or LossConfig(), eos_id)
    self.prompt_once = prompt_once

  def _token_hooks(self, module: CausalTransformer, params: Params, hooks: Hooks | None,
                   segment_ids: Array | None = None, rngs: dict | None = None) -> Hooks | None:
    """The hooks the tokens run with: a prefix prompt computed once (`prompt_once.once_hooks`) or `hooks`."""
    if not self.prompt_once:
      return hooks
    return prompt_once.once_hooks(module, params, hooks, segment_ids, rngs)

  @classmethod
  def network(cls, config: ModelConfig) -> CausalTransformer:
    if not isinstance(config, DecoderConfig):
      raise ConfigError(f'the decoder-only family runs a DecoderConfig, not {type(config).__name__}')
    return CausalTransformer(config)

  def feature_widths(self, input_length: int, target_length: int) -> dict[str, int]:
    """One stream holds the inputs and the targets."""
    return dict.fromkeys(self.FEATURES, input_length + target_length)

  def init_abstract(self, batch_size: int = 1, input_length: int = 8, target_length: int = 4) -> dict:
    tokens = jnp.ones((batch_size, input_length + target_length), jnp.int32)
    init = functools.partial(self.module.init, enable_dropout=False)
    return jax.eval_shape(init, jax.random.PRNGKey(0), tokens)

  def init_params(self, rng: Array) -> Params:
    return fresh_params(self.module, rng, jnp.ones((1, 4), jnp.int32))

  @staticmethod
  def _inputs(batch: Mapping[str, Array]) -> tuple[Array, Array]:
    """(tokens [b, l], valid [b, l] bool) of a batch; the mask is required (padding is not token 0)."""
    if INPUT_MASK not in batch:
      raise ConfigError(f"a decoder-only batch needs '{INPUT_MASK}' [batch, length] (1 = a real token) beside "
                        f"'decoder_input_tokens': token id 0 is a real token in Llama / GPT-2 vocabularies")
    return batch['decoder_input_tokens'].astype(jnp.int32), batch[INPUT_MASK] > 0

  def logits(self, frozen: Params, trainable: Params | None, batch: Mapping[str, Array],
             dropout_rng: Array | None = None) -> Array:
    """Logits [b, l, vocab] of the stream's next tokens (the rows a prompt inserts in front are dropped)."""
    rngs, hook_rng = self._split_rng(dropout_rng)
    tokens, valid = self._inputs(batch)
    variables, segment_ids = self._variables(frozen, trainable), batch.get('decoder_segment_ids')
    prompt_rngs = None if rngs is None else {'dropout': jax.random.fold_in(rngs['dropout'], 1)}
    hooks = self._token_hooks(self.module, variables['params'],
                              self._hooks(trainable, hook_rng, batch.get(TASK_FEATURE)), segment_ids, prompt_rngs)
    logits = self.module.apply(variables, tokens, valid=valid, positions=batch.get('decoder_positions'),
                               segment_ids=segment_ids, hooks=hooks, enable_dropout=dropout_rng is not None, rngs=rngs)
    return logits[:, logits.shape[1] - tokens.shape[1]:]

  def targets(self, batch: Mapping[str, Array]) -> tuple[Array, Array | None]:
    return batch['decoder_target_tokens'], batch.get('decoder_loss_weights')

  # -- prompt + inputs once, continuations from the cache ------------------------------------------------------
  def _prefill(self, frozen: Params, trainable: Params | None, batch: Mapping[str, Array],
               extra_rows: int) -> tuple[CausalTransformer, dict, Array, Array, object]:
    """Runs the method's prompt and each row's inputs but its last token into a fresh KV cache.

    Returns (module, variables, the cache, each row's last input token [b], the hooks every later step takes):
    the cache has room for `extra_rows` more tokens after the last input token. A prefix prompt runs once for
    the whole batch and joins the cache as a K/V prefix (`prompt_once`).
    """
    tokens, valid = right_align(*self._inputs(batch))
    variables = self._variables(frozen, trainable)
    module, params = self._decoding_module(variables['params'])
    variables = {'params': params}
    hooks = self._token_hooks(module, params, self._hooks(trainable, task_ids=batch.get(TASK_FEATURE)))
    head, head_valid = tokens[:, :-1], valid[:, :-1]
    # The cache must hold the rows the hook inserts too: measure them on abstract values first.
    out = jax.eval_shape(lambda: module.apply(variables, head, valid=head_valid, hooks=hooks, enable_dropout=False))
    rows = out.shape[1] + 1 + extra_rows
    _, written = module.apply(variables, head, valid=head_valid, hooks=hooks, enable_dropout=False, decode=True,
                              prefill=True, max_decode_length=rows, mutable=['cache'])
    return module, variables, written['cache'], tokens[:, -1], hooks

  def rank_classify(self, frozen: Params, trainable: Params | None, batch: Mapping[str, Array],
                    candidate_targets: Array) -> Array:
    """Scores every candidate as a continuation of its example's cached prompt + inputs: one prefill per
    example, then the candidates' tokens one step at a time over [b * c] rows sharing it.

    batch: the inputs alone (`decoder_input_tokens`, `decoder_input_mask`, and `task_ids`). A candidate is
    scored up to and including its first EOS; a row with no EOS (padding of a smaller label set) scores 0.
    """
    module, variables, cache, last, hooks = self._prefill(frozen, trainable, batch, candidate_targets.shape[-1])
    batch_size = last.shape[0]
    if candidate_targets.ndim == 2:
      candidate_targets = jnp.broadcast_to(candidate_targets[None], (batch_size,) + candidate_targets.shape)
    num_candidates, length = candidate_targets.shape[1:]
    targets = candidate_targets.reshape(batch_size * num_candidates, length).astype(jnp.int32)
    cache = decoding.cache_map(functools.partial(decoding.flat_batch_beam_expand, beam_size=num_candidates), cache,
                               apply_to_index=True)
    # Step t feeds token t - 1 (the last input token first) and predicts candidate token t.
    feed = jnp.concatenate([jnp.repeat(last, num_candidates)[:, None], targets[:, :-1]], axis=1)

    def step(cache, token):
      logits, new = module.apply({**variables, 'cache': cache}, token[:, None], valid=jnp.ones(
          (token.shape[0], 1), bool), hooks=hooks, enable_dropout=False, decode=True, mutable=['cache'])
      return new['cache'], logits[:, -1]

    _, logits = lax.scan(step, cache, feed.T)  # [length, b * c, vocab]
    eos = targets == self.eos_id
    weights = (jnp.cumsum(eos, axis=1) - eos < 1) & jnp.any(eos, axis=1, keepdims=True)
    scores = losses.sequence_scores(logits.swapaxes(0, 1), targets, weights.astype(jnp.float32))
    return scores.reshape(batch_size, num_candidates)

  def predict_batch(self, frozen: Params, trainable: Params | None, batch: Mapping[str, Array], *, method: str = 'beam',
                    num_decodes: int = 1, alpha: float = 0.6, temperature: float = 0.0, topk: int = 1,
                    topp: float = 0.0, rescale_log_probs: bool = True, rng: Array | None = None,
                    return_all_decodes: bool = False) -> tuple[Array, Array]:
    """Continues each row's inputs for `decoder_target_tokens.shape[1]` tokens; see `BaseModel.predict_batch`.
    The decodes hold the continuation only (not the inputs)."""
    max_len = batch['decoder_target_tokens'].shape[1]
    module, variables, cache, last, hooks = self._prefill(frozen, trainable, batch, max_len)
    start = jnp.zeros((last.shape[0],), jnp.int32)

    def tokens_to_logits(state: decoding.DecodingState):
      rows = state.cur_token.shape[0]
      logits, new = module.apply({**variables, 'cache': state.cache}, state.cur_token, valid=jnp.ones((rows, 1), bool),
                                 hooks=hooks, enable_dropout=False, decode=True, mutable=['cache'])
      return logits[:, -1], new['cache']

    # The loops' buffers start with the last input token, fed first. Sampling writes the continuation after it
    # and returns it alone; beam search from a prefilled cache returns it re-attached to the token.
    if method == 'beam':
      buffer = jnp.pad(last[:, None], ((0, 0), (0, max_len)))
      decodes, scores = decoding.beam_search(buffer, cache, tokens_to_logits, eos_id=self.eos_id,
                                             num_decodes=num_decodes, alpha=alpha, initial_index=start,
                                             max_decode_step=max_len)
      decodes = decodes[..., 1:max_len + 1]
    elif method == 'sample':
      buffer = jnp.pad(last[:, None], ((0, 0), (0, max_len - 1)))
      decodes, scores = decoding.temperature_sample(buffer, cache, tokens_to_logits, eos_id=self.eos_id, decode_rng=rng,
                                                    num_decodes=num_decodes, temperature=temperature, topk=topk,
                                                    topp=topp, rescale_log_probs=rescale_log_probs, initial_index=start)
    else:
      raise ConfigError(f"decoding method must be 'beam' or 'sample', got {method!r}")
    if return_all_decodes:
      return decodes, scores
    return decodes[:, -1, :], scores[:, -1]
