"""What `ShardedSteps.compiled` compiles and under which key, through `ModelFns` on a runtime from `build_runtime`
(network weights given in memory): each decode configuration gets its own compiled function, equal ones share
one, and a runtime built over another's weights serves them without a copy. And what ModelFns takes is any
method's trainable tree, named so."""
import dataclasses
import inspect

import jax
import numpy as np
import pytest

from jaxprompt.errors import ConfigError
from jaxprompt.eval import banks, evaluation
from jaxprompt.eval.evaluation import DecodeOptions, ModelFns
from jaxprompt.methods.prompt_tuning import PromptTuning
from jaxprompt.models.config import get_config
from jaxprompt.models.families import build_model
from jaxprompt.runtime.runtime import build_runtime

CFG = get_config('test_tiny')
LENGTHS = {'inputs': 6, 'targets': 4}
BEAM = DecodeOptions()
SAMPLE = DecodeOptions(method='sample', temperature=1.0, topk=0, seed=3)


@pytest.fixture(scope='module')
def runtime():
  network = build_model(CFG).init_params(jax.random.PRNGKey(0))
  return build_runtime(CFG, PromptTuning(length=3, embed_dim=CFG.emb_dim), None, LENGTHS, network=network)


@pytest.fixture(scope='module')
def inputs(runtime):
  rs = np.random.RandomState(0)
  trainable = runtime.place_trainable({'prompt': rs.uniform(-0.5, 0.5, (3, CFG.emb_dim))})
  batch = {
      'encoder_input_tokens': rs.randint(2, CFG.vocab_size, (4, LENGTHS['inputs'])).astype(np.int32),
      'decoder_target_tokens': np.zeros((4, LENGTHS['targets']), np.int32)
  }
  return trainable, batch


def _reference(runtime, trainable, batch, opts: DecodeOptions):
  """The model's own decode under `opts`, jitted apart from any ShardedSteps (ModelFns' rng for batch 0)."""
  rng = jax.random.fold_in(jax.random.PRNGKey(opts.seed), 0)
  decode = jax.jit(lambda f, t, b, r: runtime.model.predict_batch(
      f, t, b, method=opts.method, num_decodes=opts.num_decodes, alpha=opts.alpha, temperature=opts.temperature, topk=
      opts.topk, topp=opts.topp, rng=r if opts.method == 'sample' else None))
  return jax.tree.map(np.asarray, decode(runtime.frozen, trainable, batch, rng))


@pytest.mark.slow
def test_two_decode_configurations_on_one_runtime_decode_their_own_way(runtime, inputs):
  trainable, batch = inputs
  want = {name: _reference(runtime, trainable, batch, opts) for name, opts in (('beam', BEAM), ('sample', SAMPLE))}
  assert not np.array_equal(want['beam'][0], want['sample'][0])  # else the test could not tell them apart
  for name, opts in (('beam', BEAM), ('sample', SAMPLE), ('beam', BEAM)):
    decodes, scores = ModelFns(runtime, opts, None).decode(trainable, batch)
    np.testing.assert_array_equal(decodes, want[name][0], err_msg=name)
    np.testing.assert_allclose(scores, want[name][1], rtol=1e-5, err_msg=name)


def test_equal_configurations_share_one_compile(runtime, inputs):
  trainable, batch = inputs
  cache = runtime.steps._compiled  # pylint: disable=protected-access  (what the cache holds is the point)
  ModelFns(runtime, SAMPLE, None).decode(trainable, batch)
  before = len(cache)
  fns = ModelFns(runtime, dataclasses.replace(SAMPLE, seed=4), None)  # the seed is an argument
  fns.decode(trainable, batch, index=1)
  fns.loss_metrics(trainable, dict(batch, decoder_input_tokens=batch['decoder_target_tokens']))
  fns.loss_metrics(trainable, dict(batch, decoder_input_tokens=batch['decoder_target_tokens']))
  assert len(cache) == before + 1  # the eval step, once


def test_a_runtime_over_another_ones_weights_shares_them(runtime):
  served = build_runtime(CFG, PromptTuning(length=2, embed_dim=CFG.emb_dim), None, LENGTHS, network=runtime.network)
  for mine, theirs in zip(jax.tree.leaves(served.network), jax.tree.leaves(runtime.network)):
    assert mine.unsafe_buffer_pointer() == theirs.unsafe_buffer_pointer()
  with pytest.raises(ConfigError, match='not both'):
    build_runtime(CFG, None, '/some/checkpoint', LENGTHS, network=runtime.network)


def test_model_fns_and_their_callers_take_the_trainable_tree_as_trainable():
  """The tree is the method's, whatever it holds (a prompt only for prompt tuning): ModelFns' methods and every
  function taking `fns` name it `trainable`."""
  names = {
      f'ModelFns.{name}': list(inspect.signature(fn).parameters)[1:]
      for name, fn in vars(ModelFns).items()
      if inspect.isfunction(fn) and not name.startswith('_')
  }
  for module in (evaluation, banks):
    names.update({
        f'{module.__name__}.{name}': list(inspect.signature(fn).parameters)[1:]
        for name, fn in vars(module).items()
        if inspect.isfunction(fn) and fn.__module__ == module.__name__ and
        list(inspect.signature(fn).parameters)[:1] == ['fns']
    })
  assert len(names) > 10
  wrong = {name: params[0] for name, params in names.items() if params[:1] != ['trainable']}
  assert not wrong, f'the trainable tree goes by another name in {wrong}'
