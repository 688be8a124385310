"""Task heads of the encoder-only family (BERT / RoBERTa), as transformers' *For* models put them on the encoder.

  kind              reads                                   computes                                     scores
  classification    pooled [b, e] (use_pooler: BERT's)      dropout -> classifier                        [b, n]
                    hidden row 0 [b, e] (RoBERTa's)         dropout -> classifier.dense -> tanh ->       [b, n]
                                                            dropout -> classifier.out_proj
  regression        as classification, n = 1                                                             [b]
  multiple_choice   pooled (use_pooler) or row 0, per       dropout -> classifier (one unit)             [b * c]
                    choice row
  tagging           hidden states [b, l, e]                 dropout -> classifier, per token             [b, l, n]

Parameter names are transformers': `classifier/{kernel,bias}` is `classifier.weight` (transposed) / `.bias`;
RoBERTa's two-layer head is `classifier/dense` and `classifier/out_proj`, as RobertaClassificationHead. So a head
trained here is a transformers head and back (`jaxprompt.checkpoints.hf_head`). Kernels are initialised N(0, 0.02),
biases 0 (transformers' `initializer_range`). The label axis is `labels` (replicated: a head is small); the hidden
input axis is `embed`, and RoBERTa's [embed, embed] dense names its output `mlp`, as the pooler does (one partition
spec may not name `embed` twice).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxprompt.errors import ConfigError
from jaxprompt.models import layers

Array = jax.Array
KINDS = ('classification', 'regression', 'multiple_choice', 'tagging')
HEAD_KEY = 'head'  # the head's subtree in a method's trainable tree (`jaxprompt.methods.with_head`)
LABEL_AXIS = 'labels'
_INIT = nn.initializers.normal(0.02)


@dataclasses.dataclass(frozen=True)
class HeadConfig:
  """What a head computes (module docstring). `num_labels`: classes of classification / tagging; regression and
  multiple choice output one value (per row, per choice), so it is 1 there (None: the kind's default, which
  classification and tagging do not have). `use_pooler`: read BERT's pooler output rather than the [CLS] / <s>
  hidden state (classification, regression and multiple choice; the network must have a pooler). `dropout`: the
  head's dropout (transformers' classifier_dropout, else the hidden dropout: 0.1 for BERT / RoBERTa)."""
  kind: str = 'classification'
  num_labels: int | None = None
  use_pooler: bool = False
  dropout: float = 0.1

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ConfigError(f'HeadConfig.kind {self.kind!r} is not one of {", ".join(KINDS)}')
    one_value = self.kind in ('regression', 'multiple_choice')
    if self.num_labels is None and not one_value:
      raise ConfigError(f'HeadConfig.num_labels: a {self.kind} head needs its number of labels (an integer >= 1)')
    if one_value and self.num_labels not in (None, 1):
      raise ConfigError(f'HeadConfig.num_labels={self.num_labels!r}: a {self.kind} head outputs one value per '
                        f'{"example" if self.kind == "regression" else "choice"}; leave num_labels unset or 1')
    if not one_value and (not isinstance(self.num_labels, int) or self.num_labels < 1):
      raise ConfigError(f'HeadConfig.num_labels must be an integer >= 1 for a {self.kind} head, got '
                        f'{self.num_labels!r}')
    if self.use_pooler and self.kind == 'tagging':
      raise ConfigError('HeadConfig.use_pooler: a tagging head reads every token, not the pooled output; set '
                        'use_pooler=False')
    if not 0.0 <= self.dropout < 1.0:
      raise ConfigError(f'HeadConfig.dropout must be in [0, 1), got {self.dropout!r}')

  @property
  def outputs(self) -> int:
    """The width of the head's last layer."""
    return self.num_labels or 1

  @property
  def two_layers(self) -> bool:
    """RoBERTa's dense + tanh + out_proj head: sequence classification / regression on the <s> hidden state."""
    return self.kind in ('classification', 'regression') and not self.use_pooler

  def check_network(self, pooler: bool, source: str = 'the encoder') -> None:
    """One ConfigError when the head reads a pooler `source` does not have."""
    if self.use_pooler and not pooler:
      raise ConfigError(f'HeadConfig(kind={self.kind!r}, use_pooler=True) reads the pooler output but {source} has '
                        'no pooler (EncoderConfig.pooler=False; RoBERTa masked-LM files have none): set '
                        'use_pooler=False to read the first token\'s hidden state')


def _dense(features: int, axes: tuple[str, str], dtype: Any, param_dtype: Any, name: str) -> layers.DenseGeneral:
  return layers.DenseGeneral(features, dtype=dtype, param_dtype=param_dtype, kernel_axes=axes, kernel_init=_INIT,
                             use_bias=True, name=name)


class TwoLayerClassifier(nn.Module):
  """RoBERTa's classification head after its first dropout: dense [e, e] -> tanh -> dropout -> out_proj [e, n]."""
  outputs: int
  emb_dim: int
  dropout: float
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    x = jnp.tanh(_dense(self.emb_dim, ('embed', 'mlp'), self.dtype, self.param_dtype, 'dense')(x))
    x = nn.Dropout(rate=self.dropout)(x, deterministic=deterministic)
    return _dense(self.outputs, ('mlp', LABEL_AXIS), self.dtype, self.param_dtype, 'out_proj')(x)


class TaskHead(nn.Module):
  """A head of `config` over an encoder of width `emb_dim`; its parameters are the `classifier` subtree."""
  config: HeadConfig
  emb_dim: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, hidden: Array, pooled: Array | None, *, deterministic: bool = True) -> Array:
    """hidden [b, l, e] (the token rows only), pooled [b, e] or None -> float32 scores (module docstring; a
    multiple-choice batch arrives as [b * c, ...] rows and leaves as [b * c])."""
    cfg = self.config
    if cfg.kind == 'tagging':
      x = hidden
    elif cfg.use_pooler:
      cfg.check_network(pooled is not None)
      x = pooled
    else:
      x = hidden[:, 0]
    x = nn.Dropout(rate=cfg.dropout)(x, deterministic=deterministic)
    if cfg.two_layers:
      x = TwoLayerClassifier(cfg.outputs, self.emb_dim, cfg.dropout, self.dtype, self.param_dtype,
                             name='classifier')(x, deterministic)
    else:
      x = _dense(cfg.outputs, ('embed', LABEL_AXIS), self.dtype, self.param_dtype, 'classifier')(x)
    x = x.astype(jnp.float32)
    return x[..., 0] if cfg.kind in ('regression', 'multiple_choice') else x


def init_head(config: HeadConfig, emb_dim: int, dtype: Any, param_dtype: Any, rng: Array | None) -> Any:
  """The head's boxed parameters (`nn.Partitioned`, logical axes): drawn from `rng`, or abstract
  (ShapeDtypeStructs) when `rng` is None."""
  module = TaskHead(config, emb_dim, dtype, param_dtype)
  hidden = jnp.zeros((1, 1, emb_dim), dtype)
  init = lambda key: module.init(key, hidden, hidden[:, 0])['params']
  return jax.eval_shape(init, jax.random.PRNGKey(0)) if rng is None else init(rng)
