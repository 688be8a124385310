"""Masked-LM pretraining of the encoder demo model (`demo.encoder_model`) on the demo's review text.

`train_masked_lm` is the encoder family's trainer in the shared pretraining recipe (`demo.pretrain`,
`demo.families`): every parameter of a BertEncoder and its MLM head (`models.mlm_head`) trained from BERT's
initialisation on BERT's objective (`models.masked_lm`), with the optimizer and schedule the other demo models use
(gin_configs/runs/demo_encoder_pretrain.gin). Texts are one to three generated reviews (`data.iter_review_texts`),
[CLS] ... [SEP], padded to `length`. At the end it measures masked-LM accuracy on held-out texts beside the unigram
baseline (always the most frequent training token) on the very same masked positions.
"""
from __future__ import annotations

import collections
import time
from collections.abc import Iterable, Mapping
from typing import Any

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from jaxprompt.demo import data
from jaxprompt.demo import model as demo_model
from jaxprompt.demo.encoder_model import ENCODER_KEY, HEAD_KEY
from jaxprompt.demo.vocabularies import WORDPIECE_SPECIALS
from jaxprompt.errors import ConfigError
from jaxprompt.models.bert import BertEncoder
from jaxprompt.models.encoder_config import EncoderConfig
from jaxprompt.models.masked_lm import mask_tokens, masked_lm_loss
from jaxprompt.models.mlm_head import MlmHead
from jaxprompt.runtime.optim import Optimizer

DATA_SEED, HELDOUT_SEED = 0, 1  # the training texts; the held-out texts (a stream no training text comes from)
INIT_STDDEV = 0.02  # BERT's initializer_range, for the embedding tables
MASK_ID = WORDPIECE_SPECIALS.index('[MASK]')
FIRST_ORDINARY = len(WORDPIECE_SPECIALS)  # the WordPiece ids below are special tokens


def encode_texts(vocabulary: Any, texts: Iterable[str], length: int) -> tuple[np.ndarray, np.ndarray]:
  """[CLS] text [SEP] of each text, padded with 0 -> (tokens [n, length] int32, valid [n, length] bool)."""
  rows = [vocabulary.encode_with_specials(t) for t in texts]
  longest = max(len(r) for r in rows)
  if longest > length:
    raise ConfigError(f'a generated text has {longest} tokens, more than the length {length}: raise the length')
  tokens = np.zeros((len(rows), length), np.int32)
  for i, row in enumerate(rows):
    tokens[i, :len(row)] = row
  return tokens, np.arange(length)[None] < np.array([len(r) for r in rows])[:, None]


def init_params(config: EncoderConfig, seed: int) -> dict[str, Any]:
  """{ENCODER_KEY, HEAD_KEY} parameters: the layers' default initialisers, embedding tables N(0, 0.02) as BERT's
  (under one jit: one compile, not one per op of every initialiser)."""
  return jax.jit(lambda key: _fresh_params(config, key))(jax.random.PRNGKey(seed))


def _fresh_params(config: EncoderConfig, key: jax.Array) -> dict[str, Any]:
  tokens = jnp.zeros((1, 8), jnp.int32)
  encoder_key, head_key = jax.random.split(key)
  encoder = nn.meta.unbox(BertEncoder(config).init(encoder_key, tokens, enable_dropout=False)['params'])
  for table in ('token_embedder', 'position_embedder', 'token_type_embedder'):
    encoder[table] = {'embedding': encoder[table]['embedding'] * INIT_STDDEV}
  hidden = jnp.zeros((1, 8, config.emb_dim), config.dtype)
  head = nn.meta.unbox(MlmHead(config).init(head_key, hidden, encoder['token_embedder']['embedding'])['params'])
  return {ENCODER_KEY: encoder, HEAD_KEY: head}


def mlm_logits(config: EncoderConfig, params: Mapping[str, Any], tokens: jax.Array, valid: jax.Array) -> jax.Array:
  """tokens [b, l] -> masked-LM logits [b, l, vocab] (float32)."""
  encoder = params[ENCODER_KEY]
  hidden, _ = BertEncoder(config).apply({'params': encoder}, tokens, valid=valid, enable_dropout=False)
  return MlmHead(config).apply({'params': params[HEAD_KEY]}, hidden, encoder['token_embedder']['embedding'])


def _corrupt(rng: jax.Array, tokens: jax.Array, valid: jax.Array, vocab_size: int,
             rate: float) -> tuple[jax.Array, jax.Array]:
  return mask_tokens(rng, tokens, valid & (tokens >= FIRST_ORDINARY), mask_id=MASK_ID, first_ordinary=FIRST_ORDINARY,
                     vocab_size=vocab_size, rate=rate)


def held_out_scores(config: EncoderConfig, params: Mapping[str, Any], tokens: np.ndarray, valid: np.ndarray,
                    vocab_size: int, rate: float, unigram: int, seed: int) -> dict[str, float]:
  """Held-out masked-LM accuracy and loss, and the unigram baseline's accuracy on the same masked positions (%)."""

  @jax.jit
  def score(params, tokens, valid):
    inputs, selected = _corrupt(jax.random.PRNGKey(seed), tokens, valid, vocab_size, rate)
    return (*masked_lm_loss(mlm_logits(config, params, inputs, valid), tokens, selected), selected)

  loss, counts, selected = score(params, jnp.asarray(tokens), jnp.asarray(valid))
  picked = np.asarray(tokens)[np.asarray(selected)]
  return {
      'masked_lm/accuracy': 100 * float(counts['correct'] / counts['count']), 'masked_lm/loss': float(loss),
      'masked_lm/tokens': int(counts['count']), 'unigram_baseline/accuracy': 100 * float(np.mean(picked == unigram))
  }


def most_frequent_token(tokens: np.ndarray, valid: np.ndarray) -> int:
  """The commonest ordinary token of the training rows: the unigram baseline's one prediction."""
  counts = collections.Counter(int(t) for t in tokens[valid] if t >= FIRST_ORDINARY)
  return counts.most_common(1)[0][0]


@gin.configurable(module=demo_model.GIN_MODULE)
def train_masked_lm(config: EncoderConfig, vocabulary: Any, *, steps: int = gin.REQUIRED,
                    batch_size: int = gin.REQUIRED, optimizer: Optimizer = gin.REQUIRED, seed: int = 0,
                    length: int = 64, mask_rate: float = 0.15, log_period: int = 100,
                    eval_texts: int = 2000) -> tuple[int, dict[str, Any], dict[str, Any], dict[str, Any]]:
  """Pretrains `config`'s encoder + MLM head on `steps` batches of generated texts tokenized by `vocabulary`.

  Returns:
    (steps taken, the parameters {ENCODER_KEY, HEAD_KEY} as numpy, the held-out metrics, what to record of the
    data: its texts, seeds, batch and length).
  """
  start = time.time()
  vocab_size = vocabulary.vocab_size
  if vocab_size > config.vocab_size:
    raise ConfigError(f'the tokenizer has {vocab_size} tokens but the model embeds only {config.vocab_size}')
  params = init_params(config, seed)
  opt_state = optimizer.tx.init(params)

  @jax.jit
  def step(params, opt_state, tokens, valid, rng):

    def loss_fn(p):
      inputs, selected = _corrupt(rng, tokens, valid, vocab_size, mask_rate)
      return masked_lm_loss(mlm_logits(config, p, inputs, valid), tokens, selected)

    (loss, counts), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.tx.update(grads, opt_state, params)
    return jax.tree.map(jnp.add, params, updates), opt_state, loss, counts['correct'] / counts['count']

  texts = data.iter_review_texts(steps * batch_size, DATA_SEED + seed, 'train')
  rng = jax.random.PRNGKey(seed + 1)
  for i in range(steps):
    tokens, valid = encode_texts(vocabulary, (next(texts) for _ in range(batch_size)), length)
    params, opt_state, loss, accuracy = step(params, opt_state, tokens, valid, jax.random.fold_in(rng, i))
    if (i + 1) % log_period == 0 or i + 1 == steps:
      print(
          f'step {i + 1}/{steps}: loss {float(loss):.3f}, masked-LM accuracy {100 * float(accuracy):.1f}% '
          f'({time.time() - start:.0f} s)', flush=True)
  counted = encode_texts(vocabulary, data.iter_review_texts(eval_texts, DATA_SEED + seed, 'train'), length)
  held_out = encode_texts(vocabulary, data.iter_review_texts(eval_texts, HELDOUT_SEED, 'validation'), length)
  metrics = held_out_scores(config, params, *held_out, vocab_size, mask_rate, most_frequent_token(*counted),
                            HELDOUT_SEED)
  recorded = {
      'texts': 'jaxprompt.demo.data.iter_review_texts', 'data_seed': DATA_SEED + seed, 'heldout_seed': HELDOUT_SEED,
      'batch_size': batch_size, 'length': length, 'mask_rate': mask_rate, 'heldout_texts': eval_texts
  }
  return steps, jax.tree.map(np.asarray, params), metrics, recorded
