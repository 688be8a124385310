"""Prompt-tuning step benchmark on a T5 1.1 small-sized model (random weights, float32, this CPU).

Measures, side by side in one process (round-robin, best of N after warm-up, compile excluded):
  P1  train step time / forward time (ours; also a full fine-tuning step for comparison)
  P2  model FLOPs per second of the train step / this machine's float32 matmul peak (a big jitted jnp.dot)
  P3  training tokens/s, ours vs Hugging Face PEFT `PromptTuningConfig` (transformers + torch, CPU)
  P4  bytes of gradient + optimizer state, ours vs full-gradient-then-mask
and prints a table plus one JSON line. Run from the repo root:

  TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python bench/prompt_step.py [--quick] [--no-peft]

FLOPs are counted analytically per matmul (see `matmul_flops`) and cross-checked with XLA's cost analysis.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import time
from typing import Any, Callable

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprompt.models import layers
from jaxprompt.models.config import T5Config, get_config
from jaxprompt.models.prompt_model import PromptModel
from jaxprompt.models.t5 import Decoder, Encoder, Transformer
from jaxprompt.prompts.module import Prompt
from jaxprompt.training import optim
from jaxprompt.training import step as step_lib


@dataclasses.dataclass(frozen=True)
class Shape:
  batch: int = 8
  inputs: int = 256
  targets: int = 16
  prompt: int = 100

  @property
  def tokens(self) -> int:
    """Training tokens per step (input + target positions, prompt excluded), the same for PEFT and us."""
    return self.batch * (self.inputs + self.targets)


# --------------------------------------------------------------------------------------------------------------
# FLOP counting (matmuls only; elementwise work is ignored, as in the usual MFU definition).
# --------------------------------------------------------------------------------------------------------------
def _mm(m: int, k: int, n: int) -> int:
  return 2 * m * k * n


def matmul_flops(cfg: T5Config, s: Shape) -> dict[str, int]:
  """Analytic matmul FLOPs of one step. Keys:

  forward          every matmul of the forward pass except the one-hot embedding / relpos lookups (a gather
                   does those with no FLOPs);
  onehot_forward   the one-hot lookups t5x-style `Embed(one_hot=True)` really executes: [b*l, vocab] x
                   [vocab, embed] for encoder and decoder tokens, plus the relpos-bias one-hots;
  prompt_backward  what must be computed to get d loss / d prompt: for x @ W with a frozen W only dx (1x the
                   forward), for activation x activation products (attention scores, weighted sums) both
                   operands' gradients (2x) wherever they depend on the prompt. Nothing that does not depend on
                   the prompt is differentiated: decoder layer 0's self-attention and cross-attention query
                   projection (inputs are frozen decoder embeddings), its cross-attention score gradient only
                   w.r.t. the keys; the lookups never. Encoder layer 0's q/k/v input gradients are needed only
                   at the prompt rows;
  full_backward    full fine-tuning: dx + dW for every weight matmul (2x), 2x the attention products, dW of the
                   one-hot lookups (1x).
  """
  b, le, lt = s.batch, s.inputs + s.prompt, s.targets
  te, td = b * le, b * lt
  e, inner, f, v = cfg.emb_dim, cfg.num_heads * cfg.head_dim, cfg.mlp_dim, cfg.vocab_size
  h, hd, na = cfg.num_heads, cfg.head_dim, len(cfg.mlp_activations)
  fwd = pbwd = fbwd = 0

  def add(flops: int, prompt_mult: float, full_mult: float = 2.0):
    nonlocal fwd, pbwd, fbwd
    fwd += flops
    pbwd += int(prompt_mult * flops)
    fbwd += int(full_mult * flops)

  for layer in range(cfg.num_encoder_layers):
    add(3 * _mm(te, e, inner), (s.prompt / le) if layer == 0 else 1.0)  # q, k, v (dx only at prompt rows)
    add(_mm(te, inner, e), 1.0)  # out
    add(2 * _mm(b * h * le, hd, le), 2.0)  # q.k and weights.v
    add(na * _mm(te, e, f) + _mm(te, f, e), 1.0)  # wi_*, wo
  for layer in range(cfg.num_decoder_layers):
    first = layer == 0
    add(4 * _mm(td, e, inner), 0.0 if first else 1.0)  # self-attention q, k, v, out
    add(2 * _mm(b * h * lt, hd, lt), 0.0 if first else 2.0)
    add(_mm(td, e, inner), 0.0 if first else 1.0)  # cross-attention query
    add(_mm(td, inner, e), 1.0)  # cross-attention out
    add(2 * _mm(te, e, inner), 1.0)  # cross-attention keys / values over the encoder output
    add(_mm(b * h * lt, hd, le), 1.0 if first else 2.0)  # q.k (layer 0: dK only)
    add(_mm(b * h * lt, le, hd), 2.0)  # weights.v
    add(na * _mm(td, e, f) + _mm(td, f, e), 1.0)
  add(_mm(td, e, v), 1.0)  # logits
  onehot = _mm(b * s.inputs, v, e) + _mm(td, v, e)
  relpos = _mm(h, cfg.relpos_num_buckets, le * le) + _mm(h, cfg.relpos_num_buckets, lt * lt)
  return {'forward': fwd, 'onehot_forward': onehot + relpos, 'prompt_backward': pbwd,
          'full_backward': fbwd + onehot + relpos}


def xla_flops(compiled) -> float:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0]
  return float(analysis.get('flops', float('nan')))


# --------------------------------------------------------------------------------------------------------------
# Our model and its variants.
# --------------------------------------------------------------------------------------------------------------
class GatherEmbedTransformer(Transformer):
  """Proposed change: the frozen token embedding looked up by a gather (`Embed(one_hot=False)`), not a
  one-hot matmul over the vocabulary. Same parameters and outputs; only `setup` differs from `Transformer`."""

  def setup(self):
    cfg = self.config
    self.token_embedder = layers.Embed(num_embeddings=cfg.vocab_size, features=cfg.emb_dim, dtype=cfg.dtype,
                                       param_dtype=cfg.param_dtype, one_hot=False)
    self.encoder = Encoder(cfg)
    self.decoder = Decoder(cfg, shared_embedding=self.token_embedder)


def make_model(cfg: T5Config, s: Shape, gather: bool = False) -> PromptModel:
  model = PromptModel(cfg, Prompt(s.prompt, cfg.emb_dim))
  if gather:
    model.module = GatherEmbedTransformer(cfg, prompt=model.prompt)
  return model


def make_batch(cfg: T5Config, s: Shape, seed: int = 0) -> dict[str, np.ndarray]:
  """Full-length random examples (EOS-terminated), seqio EncDecFeatureConverter layout."""
  rng = np.random.default_rng(seed)
  enc = rng.integers(2, cfg.vocab_size, (s.batch, s.inputs), dtype=np.int32)
  enc[:, -1] = 1
  targets = rng.integers(2, cfg.vocab_size, (s.batch, s.targets), dtype=np.int32)
  targets[:, -1] = 1
  dec_in = np.pad(targets[:, :-1], ((0, 0), (1, 0)))
  return {'encoder_input_tokens': enc, 'decoder_input_tokens': dec_in, 'decoder_target_tokens': targets,
          'decoder_loss_weights': np.ones_like(targets, np.float32)}


def init_params(model: PromptModel, s: Shape) -> tuple[dict, dict]:
  """Random (frozen, prompt) trees."""
  enc = jnp.ones((1, s.inputs), jnp.int32)
  dec = jnp.ones((1, s.targets), jnp.int32)
  init = jax.jit(functools.partial(model.module.init, enable_dropout=False))
  params = dict(jax.tree.map(lambda x: x.unbox() if hasattr(x, 'unbox') else x,
                             init(jax.random.PRNGKey(0), enc, dec, dec),
                             is_leaf=lambda x: hasattr(x, 'unbox'))['params'])
  prompt = params.pop('prompt')
  return params, prompt


def jax_steps(model: PromptModel, frozen: dict, prompt: dict, batch: dict) -> dict[str, tuple[Callable, Any]]:
  """name -> (compiled fn, args) for: forward, prompt train step, full fine-tuning step."""
  optimizer = optim.make_optimizer()  # The paper's Adafactor (decay 0.8, no param scaling, wd 1e-5, lr 0.3).
  state = step_lib.init_train_state(prompt, optimizer, jax.random.PRNGKey(1))
  forward = jax.jit(lambda p, fz, bt: model.loss_fn(p, fz, bt)[0])
  train = jax.jit(functools.partial(step_lib.train_step, model, optimizer))

  full_tx = optim.adafactor()
  all_params = {'frozen': frozen, 'prompt': prompt}
  full_state = full_tx.init(all_params)

  def full_step(params, opt_state, bt):
    loss, grads = jax.value_and_grad(lambda pr: model.loss_fn(pr['prompt'], pr['frozen'], bt)[0])(params)
    updates, opt_state = full_tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  full = jax.jit(full_step)
  out = {}
  for name, fn, args in (('forward', forward, (prompt, frozen, batch)),
                         ('train_step', train, (state, frozen, batch)),
                         ('full_ft_step', full, (all_params, full_state, batch))):
    out[name] = (fn.lower(*args).compile(), args)
  return out
