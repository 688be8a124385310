"""SPoT transfer (Vu et al. 2022): `from_file` starts a prompt from a saved one (a .npy or a PEFT adapter folder) or
from the elementwise mean of several, in Python and through gin; and a tiny source-task -> target-task run."""
import functools

import gin
import jax
import numpy as np
import pytest

from jaxprompt.checkpoints import load_t5x_checkpoint
from jaxprompt.errors import PromptError
from jaxprompt.methods import initializers, peft_adapters
from jaxprompt.methods.prompt_tuning import PromptTuning, prompt_tuning
from jaxprompt.models.config import get_config
from jaxprompt.models.families import build_model
from jaxprompt.runtime import optim, step
from jaxprompt.runtime.state import init_train_state
from tests.method_helpers import random_batch

KEY = jax.random.PRNGKey(0)
SHAPE = (4, 16)


@pytest.fixture
def saved(tmp_path):
  """Two source prompts as .npy files and the first one also as a PEFT PROMPT_TUNING adapter."""
  rng = np.random.RandomState(0)
  prompts = [rng.normal(size=SHAPE).astype(np.float32) for _ in range(2)]
  paths = [str(tmp_path / f'source_{i}.npy') for i in range(2)]
  for path, prompt in zip(paths, prompts):
    np.save(path, prompt)
  adapter = peft_adapters.write_prompt(tmp_path / 'adapter', prompts[0])
  return prompts, paths, adapter


def test_from_file_one_file_a_peft_folder_or_the_mean_of_several(saved, tmp_path):
  prompts, paths, adapter = saved
  np.testing.assert_array_equal(initializers.from_file(paths[0])(KEY, SHAPE), prompts[0])
  np.testing.assert_array_equal(initializers.from_file(adapter)(KEY, SHAPE), prompts[0])
  mean = initializers.from_file(paths)(KEY, SHAPE)
  np.testing.assert_allclose(mean, (prompts[0] + prompts[1]) / 2, rtol=1e-6)
  np.testing.assert_allclose(initializers.from_file((adapter, paths[1]))(KEY, SHAPE), mean, rtol=1e-6)
  np.save(tmp_path / 'odd.npy', np.zeros((5, 16), np.float32))
  with pytest.raises(PromptError, match=r'odd\.npy \(3 of 3 averaged\) has shape \(5, 16\) but the prompt shape is '
                     r'\(4, 16\)'):
    initializers.from_file([*paths, str(tmp_path / 'odd.npy')])(KEY, SHAPE)
  with pytest.raises(PromptError, match=r'missing\.npy does not exist'):
    initializers.from_file([paths[0], str(tmp_path / 'missing.npy')])(KEY, SHAPE)
  with pytest.raises(PromptError, match=r'path is an empty list'):
    initializers.from_file([])
  with pytest.raises(PromptError, match=r'got 3 \(int\)'):
    initializers.from_file([paths[0], 3])
  rows = np.ones((2, 4, 2, 8), np.float32)
  prefix = peft_adapters.write_prefix(tmp_path / 'prefix', {'decoder_self': (rows, rows)}, 'positions')
  with pytest.raises(PromptError, match=r'PREFIX_TUNING adapter: key/value prefixes, not an input prompt'):
    initializers.from_file(prefix)(KEY, SHAPE)


def test_gin_binds_several_files(saved):
  prompts, paths, _ = saved
  try:
    gin.parse_config('PROMPT_INIT = @jaxprompt.methods.from_file()\n'
                     f'jaxprompt.methods.from_file.path = {paths!r}\n'
                     'jaxprompt.methods.prompt_tuning.initializer = %PROMPT_INIT')
    method = prompt_tuning(get_config('test_tiny'), length=SHAPE[0])
  finally:
    gin.clear_config()
  init = method.init(KEY, {'token_embedder': {'embedding': np.zeros((64, 16), np.float32)}})['prompt']
  np.testing.assert_allclose(init, (prompts[0] + prompts[1]) / 2, rtol=1e-6)


def test_spot_source_prompts_initialise_a_target_task(fixtures_dir, tmp_path):
  """Prompts trained on two source tasks; their mean starts the target task, which then trains on."""
  config = get_config('t5x_tiny')
  frozen = load_t5x_checkpoint(str(fixtures_dir / 't5x_tiny' / 'classic_checkpoint_0'))
  model = build_model(config, PromptTuning(length=SHAPE[0], embed_dim=config.emb_dim))
  optimizer = optim.make_optimizer()
  train_step = jax.jit(functools.partial(step.train_step, model, optimizer))  # the initialiser only sets the start

  def run(trainable, batch, steps=3):
    state = init_train_state(trainable, optimizer.tx, jax.random.PRNGKey(1))
    losses = []
    for _ in range(steps):
      state, metrics = train_step(state, frozen, batch)
      losses.append(float(metrics['loss']))
    return np.asarray(state.trainable['prompt']), losses

  sources = []
  for task in (1, 2):  # source tasks: different random input -> target mappings
    prompt, losses = run(model.method.init(jax.random.PRNGKey(task), frozen), random_batch(task))
    assert losses[-1] < losses[0]
    sources.append(str(tmp_path / f'task_{task}.npy'))
    np.save(sources[-1], prompt)
  target = PromptTuning(length=SHAPE[0], embed_dim=config.emb_dim, initializer=initializers.from_file(sources))
  start = target.init(jax.random.PRNGKey(9), frozen)
  np.testing.assert_allclose(start['prompt'], (np.load(sources[0]) + np.load(sources[1])) / 2, rtol=1e-6)
  _, losses = run(start, random_batch(7))
  assert losses[-1] < losses[0]
