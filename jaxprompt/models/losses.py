"""Token losses with t5x's semantics: cross-entropy with z-loss and label smoothing, and sequence scores."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def cross_entropy_with_logits(logits: Array, soft_targets: Array, z_loss: float) -> tuple[Array, Array]:
  """Per-token cross-entropy plus `z_loss * log(Z)**2` (keeps the softmax normaliser near 1).

  logits, soft_targets [..., vocab] -> (loss [...] including the z-term, z-term [...]).
  """
  log_z = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
  loss = -jnp.sum(soft_targets * (logits - log_z), axis=-1)
  z_term = z_loss * jnp.square(jnp.squeeze(log_z, -1))
  return loss + z_term, z_term


def compute_weighted_cross_entropy(logits: Array, targets: Array, weights: Array | None = None,
                                   label_smoothing: float = 0.0, z_loss: float = 0.0,
                                   loss_normalizing_factor: float | None = None) -> tuple[Array, Array, Array]:
  """Summed weighted token loss, as t5x's `losses.compute_weighted_cross_entropy`.

  logits [b, l, vocab] float32, targets [b, l] int, weights [b, l] -> (loss, z_loss, weight_sum), scalars. The
  loss includes the z-term and has the label-smoothing entropy constant removed, so that a perfect model with
  smoothing scores 0.
  """
  vocab_size = logits.shape[-1]
  confidence = 1.0 - label_smoothing
  low_confidence = (1.0 - confidence) / (vocab_size - 1)
  normalizing_constant = -(confidence * np.log(confidence) +
                           (vocab_size - 1) * low_confidence * np.log(low_confidence + 1e-20))
  soft_targets = jax.nn.one_hot(targets, vocab_size) * (confidence - low_confidence) + low_confidence
  loss, z_term = cross_entropy_with_logits(logits, soft_targets, z_loss)
  loss = loss - normalizing_constant
  weight_sum = jnp.asarray(np.prod(targets.shape), jnp.float32)
  if weights is not None:
    loss, z_term = loss * weights, z_term * weights
    weight_sum = jnp.sum(weights)
  if loss_normalizing_factor is not None:
    loss, z_term = loss / loss_normalizing_factor, z_term / loss_normalizing_factor
  return jnp.sum(loss), jnp.sum(z_term), weight_sum


def token_scores(logits: Array, targets: Array, weights: Array | None = None) -> Array:
  """Log-probability of each target token, zeroed where weight is 0. [b, l, vocab], [b, l] -> [b, l]."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  scores = jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return scores if weights is None else scores * weights


def sequence_scores(logits: Array, targets: Array, weights: Array | None = None) -> Array:
  """Sum of target log-probabilities per example. -> [b]."""
  return jnp.sum(token_scores(logits, targets, weights), axis=-1)
