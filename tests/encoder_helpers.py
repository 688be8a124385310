"""Helpers of the encoder-only tests: the tiny BERT's weights (initialised once, jitted) and one small batch per
head kind (padded rows; multiple choice with a missing choice; tagging with IGNORE_LABEL on non-first tokens)."""
import functools

import jax
import numpy as np

from jaxprompt.models import families
from jaxprompt.models.features import IGNORE_LABEL

VOCAB = 96


def randomized(tree, seed: int):
  """Every leaf of a (shape) tree drawn N(0, 0.5): the inits start heads near zero, which would hide a wrong head."""
  rs = np.random.RandomState(seed)
  return jax.tree.map(lambda x: rs.normal(0, 0.5, np.shape(x)).astype(np.float32), tree)


def write_files(folder, files: dict, prefix: str = '') -> dict:
  """A method's `numpy_copy` files in `folder` as `<prefix><name>`, as the checkpointer (or a run's final copy)
  writes them; {name: path}."""
  from jaxprompt.formats import npy_io  # pylint: disable=g-import-not-at-top
  out = {}
  for name, value in files.items():
    write = npy_io.write_npz if isinstance(value, dict) else npy_io.write_npy
    out[name] = write(value, str(folder / (prefix + name)))
  return out


@functools.cache
def tiny(name: str = 'bert_test_tiny'):
  """(config, frozen params as numpy) of a named tiny encoder."""
  config = families.named_config(name)
  params = jax.jit(families.build_model(config).init_params)(jax.random.PRNGKey(0))
  return config, jax.tree.map(np.asarray, params)


def head_batch(kind: str, seed: int = 0, batch: int = 8, length: int = 8, labels: int = 3) -> dict:
  """Random rows of real lengths 3..length (row 1 all padding, as a padded eval batch) and the kind's labels."""
  rs = np.random.RandomState(seed)
  shape = (batch, 3, length) if kind == 'multiple_choice' else (batch, length)
  valid = np.arange(length) < rs.randint(3, length + 1, shape[:-1])[..., None]
  valid[1] = False
  if kind == 'multiple_choice':
    valid[0, 2] = False  # example 0 has two choices
  out = {
      'encoder_input_tokens': np.where(valid, rs.randint(3, VOCAB, shape), 0).astype(np.int32),
      'encoder_input_mask': valid.astype(np.int32)
  }
  if kind == 'classification':
    out['labels'] = rs.randint(0, labels, (batch,)).astype(np.int32)
  elif kind == 'multiple_choice':
    out['labels'] = np.where(np.arange(batch) == 0, 1, rs.randint(0, 3, (batch,))).astype(np.int32)
  elif kind == 'regression':
    out['label_values'] = rs.uniform(0, 5, (batch,)).astype(np.float32)
  else:
    tags = out['encoder_input_tokens'] % labels  # a tag follows from its word, as in real tagging data
    first = valid & (rs.uniform(size=shape) < 0.7)  # a word's first sub-token; the others are ignored
    out['token_labels'] = np.where(first, tags, IGNORE_LABEL).astype(np.int32)
  return out


def fit(model, frozen, batch: dict, steps: int, learning_rate: float = 0.05):
  """(trained TrainState, first loss, last loss) after `steps` jitted Adam steps from the method's (jitted) init."""
  from jaxprompt.runtime import step  # pylint: disable=g-import-not-at-top
  from jaxprompt.runtime.optim import adam, make_optimizer  # pylint: disable=g-import-not-at-top
  from jaxprompt.runtime.state import init_train_state  # pylint: disable=g-import-not-at-top
  optimizer = make_optimizer(adam, learning_rate)
  trainable = jax.jit(model.method.init)(jax.random.PRNGKey(1), frozen)
  state = init_train_state(trainable, optimizer.tx, jax.random.PRNGKey(2))

  @jax.jit
  def run(state):

    def body(carry, _):
      carry, metrics = step.train_step(model, optimizer, carry, frozen, batch)
      return carry, metrics['loss']

    return jax.lax.scan(body, state, None, length=steps)

  state, history = run(state)
  return state, float(history[0]), float(history[-1])
