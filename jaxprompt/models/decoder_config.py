"""Decoder-only causal LM configurations (Llama / Mistral / Qwen2 / GPT-2): one frozen dataclass, named sizes.

The named sizes are the published config.json of each model (Hugging Face hub), read field by field:
hidden_size -> emb_dim, intermediate_size (GPT-2: 4 * n_embd) -> mlp_dim, num_key_value_heads -> num_kv_heads,
rms_norm_eps / layer_norm_epsilon -> norm_epsilon, max_position_embeddings / n_positions -> max_positions.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import jax.numpy as jnp

from jaxprompt.errors import ConfigError
from jaxprompt.formats import validation
from jaxprompt.models.base import OneStackConfig
from jaxprompt.models.layers import ACTIVATION_NAMES
from jaxprompt.models.rotary import RopeScaling

_NORMS = ('rms', 'layer')
_POSITIONS = ('rotary', 'learned')
_REMAT = ('none', 'full', 'dots', 'minimal')


@dataclasses.dataclass(frozen=True)
class DecoderConfig(OneStackConfig):
  """Hyperparameters of a pre-norm decoder-only transformer (`jaxprompt.models.causal_lm.CausalTransformer`).

  Llama family: norm 'rms', positions 'rotary', mlp_activations ('silu', 'linear') (gate wi_0, up wi_1).
  GPT-2: norm 'layer', positions 'learned' (a `position_embedder` table of max_positions rows), ('gelu',) (the
  tanh GELU, HF's gelu_new), biases everywhere, tied head. Queries are scaled by head_dim ** -0.5 at run time.
  num_kv_heads < num_heads is grouped-query attention (query head j reads kv head j // (num_heads / num_kv_heads)).
  bos_id / eos_id / pad_id are the ids the model's config.json names (None where it names none; a list of eos
  ids keeps its first).
  """
  family: ClassVar[str] = 'decoder_only'
  STACK: ClassVar[str] = 'decoder'
  FAMILY_NAME: ClassVar[str] = 'a decoder-only model'

  vocab_size: int = 256
  emb_dim: int = 64
  num_heads: int = 4
  num_kv_heads: int | None = None  # None: num_heads (plain multi-head attention)
  head_dim: int = 16
  mlp_dim: int = 128
  num_layers: int = 2
  mlp_activations: Sequence[str] = ('silu', 'linear')
  norm: str = 'rms'
  norm_epsilon: float = 1e-6
  positions: str = 'rotary'
  max_positions: int = 2048  # the learned table's rows; informational for rotary models
  rope_theta: float = 10000.0
  rope_scaling: RopeScaling | Mapping[str, Any] | None = None
  qkv_bias: bool = False
  out_bias: bool = False
  mlp_bias: bool = False
  tie_word_embeddings: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  dropout_rate: float = 0.0
  float32_attention_logits: bool = False
  scan_layers: bool = False
  remat_policy: str = 'none'  # 'none' | 'full' | 'dots' | 'minimal' (as T5Config)
  one_hot_embedding: bool | None = None  # None: one-hot lookup on TPU only (as T5Config)
  bos_id: int | None = None
  eos_id: int | None = None
  pad_id: int | None = None

  def __post_init__(self):
    object.__setattr__(self, 'mlp_activations', tuple(self.mlp_activations))
    if self.num_kv_heads is None:
      object.__setattr__(self, 'num_kv_heads', self.num_heads)
    if isinstance(self.rope_scaling, Mapping):
      object.__setattr__(self, 'rope_scaling', rope_scaling_from(self.rope_scaling, 'DecoderConfig.rope_scaling'))
    for name in ('vocab_size', 'emb_dim', 'num_heads', 'num_kv_heads', 'head_dim', 'mlp_dim', 'num_layers',
                 'max_positions'):
      if getattr(self, name) <= 0:
        raise ConfigError(f'DecoderConfig.{name} must be positive, got {getattr(self, name)}')
    for act in self.mlp_activations:
      if act not in ACTIVATION_NAMES:
        raise ConfigError(f'DecoderConfig.mlp_activations: unknown activation {act!r}; expected one of '
                          f'{sorted(ACTIVATION_NAMES)}')
    if self.num_heads % self.num_kv_heads:
      raise ConfigError(f'DecoderConfig.num_kv_heads={self.num_kv_heads} must divide num_heads={self.num_heads} '
                        f'(grouped-query attention shares each kv head among num_heads / num_kv_heads queries)')
    _check_choice('norm', self.norm, _NORMS)
    _check_choice('positions', self.positions, _POSITIONS)
    _check_choice('remat_policy', self.remat_policy, _REMAT)
    if self.positions == 'rotary' and self.head_dim % 2:
      raise ConfigError(f'DecoderConfig.head_dim={self.head_dim} must be even for rotary positions')
    if self.rope_scaling is not None and self.positions != 'rotary':
      raise ConfigError("DecoderConfig.rope_scaling applies to positions='rotary' only; set it to None")
    if self.norm_epsilon <= 0:
      raise ConfigError(f'DecoderConfig.norm_epsilon must be positive, got {self.norm_epsilon}')

  @property
  def position_limit(self) -> int | None:
    """The learned table's rows (GPT-2's n_positions); None for rotary positions, which have no table."""
    return self.max_positions if self.positions == 'learned' else None


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ConfigError(f'DecoderConfig.{name}={value!r} is not one of {", ".join(repr(c) for c in choices)}')


def rope_scaling_from(fields: Mapping[str, Any], where: str) -> RopeScaling | None:
  """A config.json-style rope dict -> RopeScaling; None for the plain ('default') rotation."""
  kind = fields.get('rope_type', fields.get('type', 'default'))
  if kind == 'default':
    return None
  if kind != 'llama3':
    raise ConfigError(f"{where}: rope_type {kind!r} is not supported (only 'default' and 'llama3')")
  try:
    scaling = RopeScaling(float(fields['factor']), float(fields['low_freq_factor']), float(fields['high_freq_factor']),
                          int(fields['original_max_position_embeddings']))
  except (KeyError, TypeError, ValueError) as e:
    raise ConfigError(f"{where}: llama3 rope scaling needs numeric 'factor', 'low_freq_factor', "
                      f"'high_freq_factor' and 'original_max_position_embeddings' ({type(e).__name__}: {e})") from e
  if scaling.factor <= 0 or scaling.high_freq_factor <= scaling.low_freq_factor:
    raise ConfigError(f'{where}: llama3 rope scaling needs factor > 0 and high_freq_factor > low_freq_factor, '
                      f'got {scaling}')
  return scaling


def _llama3(factor: float) -> RopeScaling:
  return RopeScaling(factor, 1.0, 4.0, 8192)


_LLAMA = dict(mlp_activations=('silu', 'linear'), norm='rms', positions='rotary')
_LLAMA3 = dict(_LLAMA, vocab_size=128256, norm_epsilon=1e-5, max_positions=131072, rope_theta=500000.0, bos_id=128000,
               eos_id=128001)
_QWEN2_5 = dict(_LLAMA, vocab_size=151936, norm_epsilon=1e-6, rope_theta=1000000.0, qkv_bias=True, bos_id=151643,
                eos_id=151643)
_GPT2 = dict(vocab_size=50257, mlp_activations=('gelu',), norm='layer', norm_epsilon=1e-5, positions='learned',
             max_positions=1024, qkv_bias=True, out_bias=True, mlp_bias=True, tie_word_embeddings=True, bos_id=50256,
             eos_id=50256)


def _sized(base: dict, emb: int, heads: int, kv_heads: int, mlp: int, layers: int, **extra) -> DecoderConfig:
  return DecoderConfig(**dict(base, emb_dim=emb, num_heads=heads, num_kv_heads=kv_heads, head_dim=emb //
                              heads, mlp_dim=mlp, num_layers=layers, **extra))


CONFIGS: dict[str, DecoderConfig] = {
    # openai-community/gpt2{,-medium,-large,-xl}: n_inner unset, so mlp_dim = 4 * n_embd.
    'gpt2_small': _sized(_GPT2, 768, 12, 12, 3072, 12),
    'gpt2_medium': _sized(_GPT2, 1024, 16, 16, 4096, 24),
    'gpt2_large': _sized(_GPT2, 1280, 20, 20, 5120, 36),
    'gpt2_xl': _sized(_GPT2, 1600, 25, 25, 6400, 48),
    # meta-llama/Llama-3.2-{1B,3B} (tied head, llama3 rope factor 32), Llama-3.1-{8B,70B} (factor 8).
    'llama3_2_1b': _sized(_LLAMA3, 2048, 32, 8, 8192, 16, rope_scaling=_llama3(32.0), tie_word_embeddings=True),
    'llama3_2_3b': _sized(_LLAMA3, 3072, 24, 8, 8192, 28, rope_scaling=_llama3(32.0), tie_word_embeddings=True),
    'llama3_1_8b': _sized(_LLAMA3, 4096, 32, 8, 14336, 32, rope_scaling=_llama3(8.0)),
    'llama3_1_70b': _sized(_LLAMA3, 8192, 64, 8, 28672, 80, rope_scaling=_llama3(8.0)),
    # mistralai/Mistral-7B-v0.3: sliding_window null, rope_theta 1e6, 32768-token vocabulary.
    'mistral_7b': _sized(_LLAMA, 4096, 32, 8, 14336, 32, vocab_size=32768, norm_epsilon=1e-5, max_positions=32768,
                         rope_theta=1000000.0, bos_id=1, eos_id=2),
    # Qwen/Qwen2.5-{0.5B,1.5B,3B,7B}: q/k/v biases; the three small ones tie the head.
    'qwen2_5_0_5b': _sized(_QWEN2_5, 896, 14, 2, 4864, 24, max_positions=32768, tie_word_embeddings=True),
    'qwen2_5_1_5b': _sized(_QWEN2_5, 1536, 12, 2, 8960, 28, max_positions=32768, tie_word_embeddings=True),
    'qwen2_5_3b': _sized(_QWEN2_5, 2048, 16, 2, 11008, 36, max_positions=32768, tie_word_embeddings=True),
    'qwen2_5_7b': _sized(_QWEN2_5, 3584, 28, 4, 18944, 28, vocab_size=152064, max_positions=131072),
    # TinyLlama/TinyLlama-1.1B (Llama 2 architecture, 32000-token vocabulary).
    'tinyllama_1_1b': _sized(_LLAMA, 2048, 32, 4, 5632, 22, vocab_size=32000, norm_epsilon=1e-5, max_positions=2048,
                             bos_id=1, eos_id=2),
    # Small random models for fast tests: GQA + llama3 rope + q/k/v biases, and a GPT-2 shape.
    'causal_test_tiny': DecoderConfig(vocab_size=96, emb_dim=32, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64,
                                      num_layers=2, qkv_bias=True, rope_scaling=RopeScaling(8.0, 1.0, 4.0,
                                                                                            64), max_positions=128),
    'gpt2_test_tiny': DecoderConfig(vocab_size=96, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=128, num_layers=2,
                                    mlp_activations=('gelu',), norm='layer', norm_epsilon=1e-5, positions='learned',
                                    max_positions=64, qkv_bias=True, out_bias=True, mlp_bias=True,
                                    tie_word_embeddings=True),
}


def get_decoder_config(name: str, **overrides) -> DecoderConfig:
  """Returns the named config (see `CONFIGS`), with `overrides` applied (e.g. `dtype=jnp.bfloat16`)."""
  if name not in CONFIGS:
    hint = validation.did_you_mean(name, CONFIGS) or f'; known: {", ".join(sorted(CONFIGS))}'
    raise ConfigError(f'unknown decoder-only model config {name!r}{hint}')
  return CONFIGS[name].replace(**overrides) if overrides else CONFIGS[name]
