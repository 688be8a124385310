"""BERT's masked-LM head: hidden states [b, l, embed] -> logits [b, l, vocab] over the tied token embedding.

  transform/{kernel,bias}       [embed, embed]  dense, then the config's activation (BERT: erf GELU)
  transform_norm/{scale,bias}   [embed]         LayerNorm (the encoder's epsilon)
  bias                          [vocab]         the output bias
The decoder is the encoder's token embedding, transposed (BERT ties it); Hugging Face stores the head as
`cls.predictions.{transform.dense, transform.LayerNorm, bias}` (`checkpoints/hf_encoder_names.mlm_head_plan`).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxprompt.models import layers
from jaxprompt.models.encoder_config import EncoderConfig

Array = jax.Array


class MlmHead(nn.Module):
  """The masked-LM head of `config`'s encoder; `embedding` [vocab, embed] is the encoder's token table."""
  config: EncoderConfig

  @nn.compact
  def __call__(self, hidden: Array, embedding: Array) -> Array:
    """hidden [b, l, embed], embedding [vocab, embed] -> logits [b, l, vocab] (float32)."""
    cfg = self.config
    # [embed, embed], its output axis named 'mlp' as the pooler's: one partition spec may not name 'embed' twice.
    x = layers.DenseGeneral(cfg.emb_dim, dtype=cfg.dtype, param_dtype=cfg.param_dtype, kernel_axes=('embed', 'mlp'),
                            use_bias=True, name='transform')(hidden)
    x = layers.activation(cfg.activation)(x)
    x = layers.LayerNorm(cfg.norm_epsilon, cfg.dtype, cfg.param_dtype, name='transform_norm')(x)
    bias = layers.logical_param(self, 'bias', nn.initializers.zeros, (cfg.vocab_size,), cfg.param_dtype, ('vocab',))
    logits = jnp.dot(x, jnp.asarray(embedding, cfg.dtype).T) + jnp.asarray(bias, cfg.dtype)
    return logits.astype(jnp.float32)
