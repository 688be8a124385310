"""BERT's masked-LM objective as pure functions: which tokens to corrupt, and the loss on them.

`mask_tokens` follows BERT's recipe (Devlin et al. 2019, transformers' DataCollatorForLanguageModeling): each real,
non-special token is selected with probability `rate` (0.15); a selected token becomes [MASK] with probability 0.8,
a random ordinary token with 0.1 and stays itself with 0.1. The model predicts the original of every selected token
(`masked_lm_loss`); unselected tokens carry no loss. Random replacements are drawn from `[first_ordinary,
vocab_size)`, so they are never a special token (transformers draws from the whole vocabulary).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

MASK_SHARE = 0.8  # of the selected tokens: replaced by [MASK]
RANDOM_SHARE = 0.1  # replaced by a random token; the remaining 0.1 keep their token


def mask_tokens(rng: Array, tokens: Array, eligible: Array, *, mask_id: int, first_ordinary: int, vocab_size: int,
                rate: float = 0.15) -> tuple[Array, Array]:
  """Corrupts tokens [b, l] for masked LM.

  Args:
    rng: a PRNG key.
    tokens: token ids [b, l].
    eligible: [b, l] bool, the tokens that may be selected (real tokens, not [CLS] / [SEP] / padding).
    mask_id: the [MASK] id.
    first_ordinary: the first id of an ordinary token (the special tokens sit below it).
    vocab_size: ids of ordinary tokens lie below it.
    rate: the share of eligible tokens selected.

  Returns:
    (inputs [b, l]: the corrupted tokens, selected [b, l] bool: where the loss sits).
  """
  select_key, action_key, random_key = jax.random.split(rng, 3)
  selected = eligible & jax.random.bernoulli(select_key, rate, tokens.shape)
  action = jax.random.uniform(action_key, tokens.shape)
  random_ids = jax.random.randint(random_key, tokens.shape, first_ordinary, vocab_size, dtype=tokens.dtype)
  inputs = jnp.where(selected & (action < MASK_SHARE), jnp.asarray(mask_id, tokens.dtype), tokens)
  inputs = jnp.where(selected & (action >= MASK_SHARE) & (action < MASK_SHARE + RANDOM_SHARE), random_ids, inputs)
  return inputs, selected


def masked_lm_loss(logits: Array, targets: Array, selected: Array) -> tuple[Array, dict[str, Array]]:
  """Mean cross-entropy over the selected tokens, and their counts.

  Args:
    logits: [b, l, vocab].
    targets: the original token ids [b, l].
    selected: [b, l] bool, the tokens `mask_tokens` selected.

  Returns:
    (loss: a scalar, {'correct': argmax hits, 'count': selected tokens, 'loss_sum': summed cross-entropy}).
  """
  weights = selected.astype(jnp.float32)
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  count = jnp.sum(weights)
  loss_sum = jnp.sum(nll * weights)
  correct = jnp.sum((jnp.argmax(logits, axis=-1) == targets) * weights)
  return loss_sum / jnp.maximum(count, 1.0), {'correct': correct, 'count': count, 'loss_sum': loss_sum}
