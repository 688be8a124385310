"""Helpers of the method tests: encoder-decoder batches, a few jitted train steps, a training MODEL_DIR holding a
state, and the check that cached decoding (greedy and beam) equals recomputing every step with the teacher-forced
decoder."""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxprompt.formats import fingerprint_files
from jaxprompt.models import decoding
from jaxprompt.models.base import BaseModel
from jaxprompt.models.t5 import Transformer
from jaxprompt.runtime import step
from jaxprompt.runtime.state import init_train_state
from jaxprompt.train.checkpoints import StateCheckpointer


def make_batch(enc, tgt) -> dict:
  enc, tgt = np.asarray(enc, np.int32), np.asarray(tgt, np.int32)
  return dict(encoder_input_tokens=enc, decoder_target_tokens=tgt,
              decoder_input_tokens=np.pad(tgt[:, :-1], ((0, 0), (1, 0))), decoder_loss_weights=(tgt
                                                                                                > 0).astype(np.float32))


def random_batch(seed=0, batch=4, enc_len=9, tgt_len=4, vocab=128) -> dict:
  rs = np.random.RandomState(seed)
  enc = rs.randint(2, vocab, (batch, enc_len))
  enc[:, -1] = 1
  enc[1, enc_len // 2:] = 0  # a padded row
  tgt = rs.randint(2, vocab, (batch, tgt_len))
  tgt[:, -1] = 1
  return make_batch(enc, tgt)


def causal_batch(seed=0, batch=4, length=7, vocab=96) -> dict:
  """Random decoder-only rows: full, right-padded (row 1) and left-padded (row 2); token 0 is a real token (the
  mask says what is padding); the loss on each row's last three real positions."""
  rs = np.random.RandomState(seed)
  mask = np.ones((batch, length), np.int32)
  mask[1, length - 3:] = 0
  mask[2, :2] = 0
  weights = np.zeros((batch, length), np.float32)
  for row, valid in zip(weights, mask):
    row[np.flatnonzero(valid)[-3:]] = 1.0
  return {
      'decoder_input_tokens': rs.randint(0, vocab, (batch, length)).astype(np.int32), 'decoder_input_mask': mask,
      'decoder_target_tokens': rs.randint(0, vocab, (batch, length)).astype(np.int32), 'decoder_loss_weights': weights
  }


def train(model, frozen, batch, steps, optimizer, seed=0):
  """(final TrainState, loss history) after `steps` jitted train steps from the method's init."""
  state = init_train_state(model.method.init(jax.random.PRNGKey(seed), frozen), optimizer.tx, jax.random.PRNGKey(1))
  fn = jax.jit(lambda s, b: step.train_step(model, optimizer, s, frozen, b))
  history = []
  for _ in range(steps):
    state, metrics = fn(state, batch)
    history.append(float(metrics['loss']))
  return state, history


def save_run(model_dir, method, state, recorded=None):
  """A training MODEL_DIR holding `state` as step 3 (orbax state + the method's numpy copy) and a fingerprint."""
  with StateCheckpointer(str(model_dir), numpy_copy=lambda s: method.numpy_copy(s.trainable)) as checkpointer:
    checkpointer.save(3, state, data_position=3, batch_size=2)
    checkpointer.wait_until_finished()
  if recorded is not None:
    (model_dir / 'numpy_checkpoints' / 'checkpoint_3' / fingerprint_files.STEP_FILE).write_text(
        fingerprint_files.to_json(recorded))
  return model_dir


def assert_decoding_matches_recomputation(model: BaseModel, frozen, trainable, batch, length: int) -> None:
  """`predict_batch` (greedy, and beam search with 2 beams) through the KV cache = the same search with every
  step's logits recomputed by the teacher-forced decoder over the tokens so far."""
  hooks = model.method.hooks(trainable)
  variables = {'params': model.method.network_params(frozen, trainable)}
  module = model.module
  enc = jnp.asarray(batch['encoder_input_tokens'])
  encoded, valid = jax.jit(
      lambda v, e: module.apply(v, e, hooks=hooks, enable_dropout=False, method=Transformer.encode))(variables, enc)
  target = {**batch, 'decoder_target_tokens': np.zeros((enc.shape[0], length), np.int32)}
  zeros = jnp.zeros((enc.shape[0], length), jnp.int32)

  def recomputed(beams):
    enc_b = decoding.flat_batch_beam_expand(encoded, beams)
    valid_b = decoding.flat_batch_beam_expand(valid, beams)

    def fn(state):
      tokens = state.sequences[:, :length]  # BOS then the tokens so far (zeros after the current index)
      logits = module.apply(variables, enc_b, valid_b, tokens, jnp.ones_like(tokens), hooks=hooks, enable_dropout=False,
                            method=Transformer.decode)
      index = jnp.broadcast_to(state.cur_index, (tokens.shape[0],))
      return jnp.take_along_axis(logits, index[:, None, None], axis=1)[:, 0], state.cache

    return fn

  greedy, _ = jax.jit(functools.partial(model.predict_batch, method='sample', temperature=0.0))(frozen, trainable,
                                                                                                target)
  want, _ = jax.jit(lambda: decoding.temperature_sample(zeros, {}, recomputed(1), eos_id=model.eos_id, decode_rng=jax.
                                                        random.PRNGKey(0), temperature=0.0))()
  np.testing.assert_array_equal(greedy, want[:, -1])
  beam, beam_scores = jax.jit(functools.partial(model.predict_batch, method='beam', num_decodes=2))(frozen, trainable,
                                                                                                    target)
  want, want_scores = jax.jit(
      lambda: decoding.beam_search(zeros, {}, recomputed(2), eos_id=model.eos_id, num_decodes=2))()
  np.testing.assert_array_equal(beam, want[:, -1])
  np.testing.assert_allclose(beam_scores, want_scores[:, -1], atol=1e-5)


def sharding_batch() -> dict:
  """The fixed [8, 10] -> [8, 4] batch the sharded-step scripts (tests/scripts/sharded_*.py) compare on."""
  rs = np.random.RandomState(0)
  enc = rs.randint(2, 128, (8, 10)).astype(np.int32)
  tgt = rs.randint(2, 128, (8, 4)).astype(np.int32)
  tgt[:, -1] = 1
  return dict(make_batch(enc, tgt), decoder_loss_weights=np.ones_like(tgt))
