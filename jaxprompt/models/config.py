"""T5 model configurations: one frozen dataclass, plus the named sizes of T5 1.0, T5 1.1 and mT5."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import jax.numpy as jnp

from jaxprompt.errors import ConfigError
from jaxprompt.formats import validation
from jaxprompt.models.hooks import AttentionKind, Stack


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Hyperparameters of a T5X-style encoder-decoder (t5x `examples/t5/network.T5Config` plus a few knobs).

  `mlp_activations=('gelu', 'linear')` is T5 1.1's gated GELU (kernels `wi_0`, `wi_1`); `('relu',)` is T5 1.0's
  (kernel `wi`). `logits_via_embedding=True` ties the output layer to the token embedding and scales the
  decoder output by `emb_dim ** -0.5` (T5 1.0); otherwise a separate `logits_dense` kernel is used.
  """
  family: ClassVar[str] = 'encoder_decoder'
  vocab_size: int = 32128
  emb_dim: int = 512
  num_heads: int = 6
  num_encoder_layers: int = 8
  num_decoder_layers: int = 8
  head_dim: int = 64
  mlp_dim: int = 1024
  mlp_activations: Sequence[str] = ('gelu', 'linear')
  dropout_rate: float = 0.0
  logits_via_embedding: bool = False
  float32_attention_logits: bool = False
  relpos_num_buckets: int = 32
  relpos_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  # Activation dtype (bfloat16 on TPU) and parameter dtype.
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  # Large models: run each stack's layers as a `lax.scan` (params stacked on a leading 'layers' axis) and
  # rematerialise each layer's activations in the backward pass.
  scan_layers: bool = False
  remat_policy: str = 'none'  # 'none' | 'full' | 'dots' (save matmul outputs) | 'minimal'
  # Token lookup by one-hot matmul (t5x's choice, fast on TPU) or by gather. None: one-hot on TPU only. On CPU
  # the one-hot matmul over a 32k vocabulary is a third of a small model's forward FLOPs (bench/README.md).
  one_hot_embedding: bool | None = None

  def __post_init__(self):
    object.__setattr__(self, 'mlp_activations', tuple(self.mlp_activations))
    for act in self.mlp_activations:
      if act not in _ACTIVATION_NAMES:
        raise ConfigError(f'unknown mlp activation {act!r}; expected one of {sorted(_ACTIVATION_NAMES)}')
    if self.remat_policy not in ('none', 'full', 'dots', 'minimal'):
      raise ConfigError(f"remat_policy {self.remat_policy!r} is not one of 'none', 'full', 'dots', 'minimal'")
    for name in ('vocab_size', 'emb_dim', 'num_heads', 'head_dim', 'mlp_dim', 'relpos_num_buckets'):
      if getattr(self, name) <= 0:
        raise ConfigError(f'{name} must be positive, got {getattr(self, name)}')

  @property
  def input_stack(self) -> Stack:
    """The stack whose embedded tokens an input hook (a prompt) sees."""
    return 'encoder'

  @property
  def num_kv_heads(self) -> int:
    return self.num_heads

  @property
  def attention_kinds(self) -> tuple[AttentionKind, ...]:
    return ('encoder_self', 'decoder_self', 'cross')

  @property
  def relative_position_bias(self) -> bool:
    """Self-attentions add a relative-position bias, counted from the row start (packing shifts it)."""
    return True

  @property
  def position_limit(self) -> int | None:
    """None: relative positions have no table to run past (far distances share the last bucket)."""
    return None

  def stack_depth(self, stack: Stack) -> int:
    """Layers of `stack` ('encoder' or 'decoder')."""
    if stack == 'encoder':
      return self.num_encoder_layers
    if stack == 'decoder':
      return self.num_decoder_layers
    raise ConfigError(f"a T5 model has stacks 'encoder' and 'decoder', not {stack!r}")

  def replace(self, **changes) -> T5Config:
    return dataclasses.replace(self, **changes)


_ACTIVATION_NAMES = {'gelu', 'relu', 'linear', 'gelu_exact', 'silu'}

_T5_1_1 = dict(vocab_size=32128, mlp_activations=('gelu', 'linear'), head_dim=64)
_T5_1_0 = dict(vocab_size=32128, mlp_activations=('relu',), logits_via_embedding=True)
_MT5 = dict(_T5_1_1, vocab_size=250112)

# (emb_dim, num_heads, head_dim, mlp_dim, layers per stack)
_SIZES_1_1 = {
    'small': (512, 6, 64, 1024, 8),
    'base': (768, 12, 64, 2048, 12),
    'large': (1024, 16, 64, 2816, 24),
    'xl': (2048, 32, 64, 5120, 24),
    'xxl': (4096, 64, 64, 10240, 24),
}
_SIZES_1_0 = {
    'small': (512, 8, 64, 2048, 6),
    'base': (768, 12, 64, 3072, 12),
    'large': (1024, 16, 64, 4096, 24),
    '3b': (1024, 32, 128, 16384, 24),
    '11b': (1024, 128, 128, 65536, 24),
}


def _sized(base: dict, size: tuple) -> T5Config:
  emb, heads, head_dim, mlp, layers = size
  return T5Config(**dict(base, emb_dim=emb, num_heads=heads, head_dim=head_dim, mlp_dim=mlp, num_encoder_layers=layers,
                         num_decoder_layers=layers))


CONFIGS: dict[str, T5Config] = {}
for _name, _size in _SIZES_1_1.items():
  CONFIGS[f't5_1_1_{_name}'] = _sized(_T5_1_1, _size)
  # The LM-adapted checkpoints (t5_1_1_lm100k_*) share the T5 1.1 architecture.
  CONFIGS[f't5_1_1_lm100k_{_name}'] = CONFIGS[f't5_1_1_{_name}']
  CONFIGS[f'mt5_{_name}'] = _sized(_MT5, _size)
for _name, _size in _SIZES_1_0.items():
  CONFIGS[f't5_1_0_{_name}'] = _sized(_T5_1_0, _size)

# The t5x fixture model in ../shared/fixtures/t5x_tiny (t5x.examples.t5.network, random init).
CONFIGS['t5x_tiny'] = T5Config(vocab_size=128, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=64, num_encoder_layers=2,
                               num_decoder_layers=2)
# t5x/testdata/test_t5_tiny.checkpoint_0 (T5X minimal T5 1.1).
CONFIGS['t5x_test_tiny'] = T5Config(vocab_size=32128, emb_dim=8, num_heads=4, head_dim=3, mlp_dim=16,
                                    num_encoder_layers=2, num_decoder_layers=2)
# prompt-tuning's test_t5_1_1_tiny checkpoint (flaxformer T5 1.1, relpos 4 buckets / distance 8).
CONFIGS['flaxformer_test_tiny'] = T5Config(vocab_size=32128, emb_dim=4, num_heads=2, head_dim=2, mlp_dim=8,
                                           num_encoder_layers=2, num_decoder_layers=2, relpos_num_buckets=4,
                                           relpos_max_distance=8)
# A small random model for fast tests.
CONFIGS['test_tiny'] = T5Config(vocab_size=64, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32, num_encoder_layers=2,
                                num_decoder_layers=2, relpos_num_buckets=8, relpos_max_distance=16)


def get_config(name: str, **overrides) -> T5Config:
  """Returns the named config (see `CONFIGS`), with `overrides` applied (e.g. `dtype=jnp.bfloat16`)."""
  if name not in CONFIGS:
    hint = validation.did_you_mean(name, CONFIGS) or f'; known: {", ".join(sorted(CONFIGS))}'
    raise ConfigError(f'unknown model config {name!r}{hint}')
  return CONFIGS[name].replace(**overrides) if overrides else CONFIGS[name]
