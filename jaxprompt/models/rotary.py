"""Rotary position embeddings (RoPE) as Hugging Face's Llama family computes them, llama3 frequency scaling included.

Convention (transformers' `rotate_half`): a head vector [d] is split into halves (x1, x2); position t turns it
into x * cos(t f) + (-x2, x1) * sin(t f), with the frequencies f [d/2] repeated over both halves. Frequencies
are computed in float32 (as transformers does), cos / sin are cast to the activations' dtype before use.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """Llama 3.1's frequency scaling (config.json `rope_scaling` / `rope_parameters` with rope_type 'llama3').

  Wavelengths longer than original_max_positions / low_freq_factor are slowed by `factor`, those shorter than
  original_max_positions / high_freq_factor are kept, and the band between is interpolated smoothly.
  """
  factor: float
  low_freq_factor: float
  high_freq_factor: float
  original_max_positions: int


def inverse_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None = None) -> np.ndarray:
  """The rotation frequencies f [head_dim / 2] (float32)."""
  exponents = np.arange(0, head_dim, 2).astype(np.float32) / np.float32(head_dim)
  inv_freq = (1.0 / (np.float32(theta)**exponents)).astype(np.float32)
  if scaling is None:
    return inv_freq
  old = scaling.original_max_positions
  low_wavelen, high_wavelen = old / scaling.low_freq_factor, old / scaling.high_freq_factor
  wavelen = (2 * math.pi / inv_freq).astype(np.float32)
  scaled = np.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq).astype(np.float32)
  smooth = ((old / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)).astype(
      np.float32)
  smoothed = ((1 - smooth) * scaled / scaling.factor + smooth * scaled).astype(np.float32)
  medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
  return np.where(medium, smoothed, scaled).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Rotary:
  """The rotation of one attention's queries and keys (hashable, so it can be a Flax module field)."""
  head_dim: int
  theta: float
  scaling: RopeScaling | None = None

  def __call__(self, x: Array, positions: Array) -> Array:
    """x [b, l, h, d] rotated to positions [b, l] (int)."""
    inv_freq = jnp.asarray(inverse_frequencies(self.head_dim, self.theta, self.scaling))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [b, l, d/2]
    angles = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]  # one angle set for every head
    cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin
