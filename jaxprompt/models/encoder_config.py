"""Encoder-only configurations (BERT / RoBERTa): one frozen dataclass, named sizes.

The named sizes are the published config.json of each model (Hugging Face hub), read field by field:
hidden_size -> emb_dim, intermediate_size -> mlp_dim, num_hidden_layers -> num_layers, layer_norm_eps ->
norm_epsilon, max_position_embeddings -> max_positions, type_vocab_size -> type_vocab_size, and RoBERTa's
pad_token_id + 1 -> position_offset (its position table numbers real tokens from padding_idx + 1).
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax.numpy as jnp

from jaxprompt.errors import ConfigError
from jaxprompt.models.base import OneStackConfig
from jaxprompt.models.layers import ACTIVATION_NAMES

_REMAT = ('none', 'full', 'dots', 'minimal')


@dataclasses.dataclass(frozen=True)
class EncoderConfig(OneStackConfig):
  """Hyperparameters of a post-LayerNorm bidirectional encoder (`jaxprompt.models.bert.BertEncoder`).

  Every layer is LayerNorm(x + attention(x)) then LayerNorm(x + mlp(x)), with biases on every projection, queries
  scaled by head_dim ** -0.5 at run time and one MLP activation ('gelu_exact': HF's erf 'gelu'). The embeddings are
  token + learned absolute position (row `position_offset + position`) + token type, then a LayerNorm. `pooler`: the
  network also returns tanh(dense(hidden state of row 0)) (BERT's pooler; RoBERTa's masked-LM files have none).

  `kv_prefix_shifts_positions`: with a K/V prefix of p rows (P-tuning v2) the tokens sit at positions p.. (what
  transformers' BERT / RoBERTa do given `past_key_values`, and so what THUDM's P-tuning v2 trained with); False
  keeps them at 0.. as without a prefix.
  """
  family: ClassVar[str] = 'encoder_only'
  STACK: ClassVar[str] = 'encoder'
  FAMILY_NAME: ClassVar[str] = 'an encoder-only model'

  vocab_size: int = 96
  emb_dim: int = 32
  num_heads: int = 4
  head_dim: int = 8
  mlp_dim: int = 64
  num_layers: int = 2
  activation: str = 'gelu_exact'
  norm_epsilon: float = 1e-12
  max_positions: int = 64  # rows of the position table (RoBERTa's include its offset rows)
  position_offset: int = 0  # RoBERTa: pad_token_id + 1 = 2
  type_vocab_size: int = 2  # RoBERTa: 1
  pooler: bool = True
  kv_prefix_shifts_positions: bool = True
  pad_id: int = 0  # the tokenizer's padding id (informational: padding is told by the mask, never by the id)
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  dropout_rate: float = 0.0
  float32_attention_logits: bool = False
  scan_layers: bool = False
  remat_policy: str = 'none'  # 'none' | 'full' | 'dots' | 'minimal' (as T5Config)
  one_hot_embedding: bool | None = None  # None: one-hot lookup on TPU only (as T5Config)

  def __post_init__(self):
    for name in ('vocab_size', 'emb_dim', 'num_heads', 'head_dim', 'mlp_dim', 'num_layers', 'max_positions',
                 'type_vocab_size'):
      if getattr(self, name) <= 0:
        raise ConfigError(f'EncoderConfig.{name} must be positive, got {getattr(self, name)}')
    if self.position_offset < 0 or self.position_offset >= self.max_positions:
      raise ConfigError(f'EncoderConfig.position_offset={self.position_offset} must lie in [0, max_positions='
                        f'{self.max_positions})')
    if self.activation not in ACTIVATION_NAMES:
      raise ConfigError(f'EncoderConfig.activation: unknown activation {self.activation!r}; expected one of '
                        f'{sorted(ACTIVATION_NAMES)}')
    if self.remat_policy not in _REMAT:
      raise ConfigError(f'EncoderConfig.remat_policy={self.remat_policy!r} is not one of '
                        f'{", ".join(repr(c) for c in _REMAT)}')
    if self.norm_epsilon <= 0:
      raise ConfigError(f'EncoderConfig.norm_epsilon must be positive, got {self.norm_epsilon}')

  @property
  def max_length(self) -> int:
    """The longest row (prompt rows and K/V prefix shift included) the position table numbers."""
    return self.max_positions - self.position_offset

  @property
  def position_limit(self) -> int:
    """Positions a row may use: the learned table's rows past RoBERTa's offset (`max_length`)."""
    return self.max_length

  @property
  def num_kv_heads(self) -> int:
    """Plain multi-head attention: a K/V prefix row carries every head."""
    return self.num_heads


_BERT = dict(vocab_size=30522, max_positions=512, position_offset=0, type_vocab_size=2, norm_epsilon=1e-12, pad_id=0,
             dropout_rate=0.1)
_ROBERTA = dict(vocab_size=50265, max_positions=514, position_offset=2, type_vocab_size=1, norm_epsilon=1e-5, pad_id=1,
                dropout_rate=0.1)


def _sized(base: dict, emb: int, heads: int, mlp: int, layers: int, **extra) -> EncoderConfig:
  return EncoderConfig(**dict(base, emb_dim=emb, num_heads=heads, head_dim=emb //
                              heads, mlp_dim=mlp, num_layers=layers, **extra))


CONFIGS: dict[str, EncoderConfig] = {
    # google-bert/bert-{base,large}-uncased (hidden_dropout_prob 0.1, as dropout_rate).
    'bert_base_uncased': _sized(_BERT, 768, 12, 3072, 12),
    'bert_large_uncased': _sized(_BERT, 1024, 16, 4096, 24),
    # FacebookAI/roberta-{base,large}: 514 position rows, the first two (padding_idx 1 and below) never read.
    'roberta_base': _sized(_ROBERTA, 768, 12, 3072, 12),
    'roberta_large': _sized(_ROBERTA, 1024, 16, 4096, 24),
    # Small random models for fast tests.
    'bert_test_tiny': EncoderConfig(),
    'roberta_test_tiny': EncoderConfig(max_positions=66, position_offset=2, type_vocab_size=1, norm_epsilon=1e-5,
                                       pad_id=1),
}
