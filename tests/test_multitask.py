"""Multi-task prompt training (`jaxprompt.methods.multitask`, `jaxprompt.data.pipeline.train_dataset` with task
names): the mixed stream tags each example with its task at the mixture's rates, deterministically; each row's
prompt is its task's by the method's formula; gradients reach only the shared parameters and the batch's own
tasks'; a short run over a two-task mixture evaluates per task and leaves every task's prompt in a file."""
import functools

import jax
import numpy as np
import pytest
import seqio

from jaxprompt.checkpoints import load_t5x_checkpoint
from jaxprompt.commands import configs
from jaxprompt.commands import evaluate as evaluate_command
from jaxprompt.commands import train as trainer
from jaxprompt.commands.groups import PromptSource
from jaxprompt.data import custom, pipeline
from jaxprompt.errors import ConfigError, PromptError
from jaxprompt.methods import multitask
from jaxprompt.methods.prompt_bank import PromptBank
from jaxprompt.models.config import get_config
from jaxprompt.models.families import build_model
from tests.helpers import regroup
from tests.method_helpers import random_batch
from tests.tiny_task import LABELS, LENGTHS

CFG = get_config('t5x_tiny')
TASK_A, TASK_B, MIXTURE = 'jp_mt_a_sentiment', 'jp_mt_b_flipped', 'jp_mt_mixture'
NAMES = (TASK_A, TASK_B)  # seqio lists a mixture's tasks sorted by name: task ids 0, 1
RATES = (3.0, 1.0)


@pytest.fixture(scope='module')
def frozen(fixtures_dir):
  return load_t5x_checkpoint(str(fixtures_dir / 't5x_tiny' / 'classic_checkpoint_0'))


@pytest.fixture(scope='module')
def mixture(tiny_files):
  """The tiny sentiment task and its label-flipped twin (same inputs, opposite targets), mixed 3:1."""
  vocab = configs.vocabulary(str(tiny_files['vocab']), 0)
  flipped = tiny_files['train'].parent / 'train_flipped.tsv'
  swap = {LABELS[0]: LABELS[1], LABELS[1]: LABELS[0]}
  flipped.write_text(''.join(f'{line.split(chr(9))[0]}\t{swap[line.split(chr(9))[1]]}\n'
                             for line in tiny_files['train'].read_text().splitlines()))
  for name, train in ((TASK_A, tiny_files['train']), (TASK_B, flipped)):
    custom.register_file_task(name, train=str(train), validation=str(tiny_files['validation']), label_set=LABELS,
                              vocabulary=vocab, overwrite=True)
  if MIXTURE not in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.add(MIXTURE, list(zip(NAMES, RATES)))
  return seqio.get_mixture_or_task(MIXTURE)


# ------------------------------------------------------------------------------------ the mixed stream


@pytest.mark.slow
def test_mixed_stream_tags_tasks_at_the_rates_and_is_deterministic(mixture):
  ds = pipeline.train_dataset(mixture, LENGTHS, 'train', 8, seed=3, task_names=NAMES)
  batches = list(pipeline.train_batches(ds.take(40)))
  ids = np.concatenate([b['task_ids'] for b in batches])
  assert ids.dtype == np.int32 and set(ids) == {0, 1}
  assert abs(ids.mean() - RATES[1] / sum(RATES)) < 0.08  # 320 draws: sd ~0.024
  # Each id names the task the example came from: task A's target for an input, or (flipped) the other label.
  truth = {
      tuple(ex['inputs']): tuple(ex['targets'])
      for ex in pipeline.read_examples(seqio.get_mixture_or_task(TASK_A), LENGTHS, 'train')[0]
  }
  for b in batches:
    for tokens, target, task in zip(b['encoder_input_tokens'], b['decoder_target_tokens'], b['task_ids']):
      same = tuple(target[target > 0]) == truth[tuple(tokens[tokens > 0])]
      assert same == (task == 0)
  # Same seed: the same batches; skipping k gives batches k.. (resume); another seed: another order.
  again = list(
      pipeline.train_batches(
          pipeline.train_dataset(mixture, LENGTHS, 'train', 8, seed=3, task_names=NAMES).take(40), skip=5))
  for want, got in zip(batches[5:], again):
    for key in want:
      np.testing.assert_array_equal(want[key], got[key])
  other = next(pipeline.train_batches(pipeline.train_dataset(mixture, LENGTHS, 'train', 8, seed=4, task_names=NAMES)))
  assert not np.array_equal(other['encoder_input_tokens'], batches[0]['encoder_input_tokens'])


def test_mixing_is_seqios_own_plus_the_task_ids(mixture):
  ours = pipeline.mixed_task_stream(mixture, LENGTHS, 'train', 7, NAMES).take(24)
  theirs = mixture.get_dataset(LENGTHS, 'train', use_cached=False, shuffle=True, seed=7, num_epochs=None).take(24)
  for mine, seqios in zip(ours.as_numpy_iterator(), theirs.as_numpy_iterator()):
    assert set(mine) == set(seqios) | {'task_ids'} and mine['task_ids'].shape == (1,)
    for key in seqios:
      np.testing.assert_array_equal(mine[key], seqios[key])


def test_stream_errors(mixture):
  task_b = seqio.get_mixture_or_task(TASK_B)
  ds = pipeline.train_dataset(task_b, LENGTHS, 'train', 4, seed=0, task_names=NAMES)
  assert (next(pipeline.train_batches(ds))['task_ids'] == 1).all()  # a single task: its own index
  with pytest.raises(ConfigError, match=rf"\['{TASK_B}'\] that the multi-task method does not know"):
    pipeline.train_dataset(mixture, LENGTHS, 'train', 4, seed=0, task_names=(TASK_A, 'other'))
  with pytest.raises(ConfigError, match='multi-task training .* set PACK=False'):
    pipeline.train_dataset(mixture, LENGTHS, 'train', 4, seed=0, pack=True, task_names=NAMES)


# ------------------------------------------------------------------------------------ the methods


def _methods(tasks=('a', 'b', 'c')):
  """Every mode of MultiTaskPrompts and MPT, small, with the numpy formula of task t's prompt."""

  def mtp(mode, **kw):
    return multitask.MultiTaskPrompts(tasks=tasks, config=CFG, length=3, mode=mode, **kw)

  return {
      'concat': (mtp('concat', task_length=2), lambda p, t: np.concatenate([p['shared_prompt'], p['task_prompts'][t]])),
      'add': (mtp('add'), lambda p, t: p['shared_prompt'] + p['task_prompts'][t]),
      'concat_features': (mtp('concat_features', shared_features=20),
                          lambda p, t: np.concatenate([p['shared_prompt'], p['task_prompts'][t]], axis=1)),
      'project': (mtp('project',
                      shared_features=8), lambda p, t: p['shared_prompt'] @ p['task_kernel'][t] + p['task_bias'][t]),
      'mpt': (multitask.MultitaskPromptTuning(tasks=tasks, config=CFG, length=4, rank=2),
              lambda p, t: p['prompt_embeddings'] * (p['prefix_task_cols'][t] @ p['prefix_task_rows'][t])),
  }


def _params(method, seed=0):
  """Random values of every parameter (the inits start some near zero, which would hide mistakes)."""
  shapes = {k: v.value.shape for k, v in method.abstract(None).items()}
  rs = np.random.RandomState(seed)
  return {k: rs.normal(0, 0.5, s).astype(np.float32) for k, s in shapes.items()}


@pytest.mark.parametrize('kind', ['concat', 'add', 'concat_features', 'project', 'mpt'])
def test_each_row_gets_its_tasks_prompt_by_the_formula(kind, frozen):
  method, formula = _methods()[kind]
  init = method.init(jax.random.PRNGKey(0), frozen)
  assert jax.tree.map(np.shape, init) == {k: v.value.shape for k, v in method.abstract(None).items()}
  params = _params(method)
  ids = np.asarray([2, 0, 1, 2], np.int32)
  hook = method.hooks(params, task_ids=ids).inputs
  for row, t in enumerate(ids):
    np.testing.assert_allclose(np.asarray(hook.prompts[row]), formula(params, t), rtol=1e-5, atol=1e-6)
  files = method.numpy_copy(params)[multitask.MULTITASK_FILE]
  assert list(files) == ['a', 'b', 'c', 'method/multitask']  # every task's prompt, and the file's marker
  for t, name in enumerate(method.task_names):
    np.testing.assert_allclose(files[name], formula(params, t), rtol=1e-5, atol=1e-6)


def _logits(method, frozen, params, batch):
  return np.asarray(jax.jit(build_model(CFG, method).logits)(frozen, params, batch))


@pytest.mark.parametrize('kind', ['concat', 'mpt'])
def test_gradient_reaches_only_shared_and_the_batchs_tasks(kind, frozen):
  method, _ = _methods()[kind]
  params = _params(method)
  batch = dict(random_batch(2), task_ids=np.asarray([0, 2, 2, 0], np.int32))  # task 1 ('b') absent
  grads = jax.jit(jax.grad(lambda p: build_model(CFG, method).loss_fn(frozen, p, batch)[0]))(params)
  for key, grad in grads.items():
    grad = np.asarray(grad)
    if grad.shape[0] == 3 and key not in ('shared_prompt', 'prompt_embeddings'):  # per-task: [T, ...]
      assert not grad[1].any(), key
      assert grad[0].any() and grad[2].any(), key
    else:
      assert grad.any(), key
  # The inference form is a prompt bank of the computed prompts: the same logits on a mixed batch.
  bank, tree = method.inference(params)
  assert isinstance(bank, PromptBank) and bank.task_names == method.task_names
  np.testing.assert_allclose(_logits(bank, frozen, tree, batch), _logits(method, frozen, params, batch), rtol=1e-4,
                             atol=1e-4)


def test_method_errors(frozen, tmp_path):
  method, _ = _methods()['concat']
  with pytest.raises(ConfigError, match=r"needs a 'task_ids' feature|needs each row's task id"):
    build_model(CFG, method).logits(frozen, _params(method), random_batch(0))
  with pytest.raises(ConfigError, match='set PACK=False'):
    method.packing_slots  # pylint: disable=pointless-statement
  with pytest.raises(ConfigError, match="mode must be one of concat, add"):
    multitask.MultiTaskPrompts(tasks=('a',), config=CFG, length=3, mode='sum')
  with pytest.raises(ConfigError, match="task_length=2 needs mode='concat'"):
    multitask.MultiTaskPrompts(tasks=('a',), config=CFG, length=3, mode='add', task_length=2)
  with pytest.raises(ConfigError, match='task names must be unique'):
    multitask.MultitaskPromptTuning(tasks=('a', 'a'), config=CFG, length=3)
  with pytest.raises(ConfigError, match='needs `tasks`'):
    multitask.multitask_prompts(CFG)
  with pytest.raises(ConfigError, match=r"shared_features must be an integer in \[1, 31\] for mode 'concat_features'"):
    multitask.MultiTaskPrompts(tasks=('a',), config=CFG, length=3, mode='concat_features', shared_features=32)
  prefix = tmp_path / 'prefix.npz'
  np.savez(prefix, **{'encoder_self/key': np.zeros((2, 3, 4, 8), np.float32)})
  assert not multitask.is_multitask_file(str(prefix))
  # Cut short, it is not called a multi-task prompts file: what it holds is the question, and it is damaged.
  truncated = tmp_path / 'truncated.npz'
  truncated.write_bytes(prefix.read_bytes()[:100])
  with pytest.raises(PromptError, match=r'prompt file .*truncated.npz is truncated or damaged') as info:
    multitask.is_multitask_file(str(truncated))
  assert 'multi-task' not in str(info.value)
  bad = tmp_path / 'bad.npz'
  np.savez(bad, a=np.zeros((3, 7), np.float32))
  with pytest.raises(PromptError, match=r"bad.npz: task 'a' has a float32 array of shape \(3, 7\)"):
    multitask.read_multitask_file(str(bad), CFG)


# ------------------------------------------------------------------------------------ a training run


@pytest.mark.parametrize('factory, rows', [
    (functools.partial(multitask.multitask_prompts, length=3, task_length=2), 5),
    (functools.partial(multitask.multitask_prompt_tuning, length=4, rank=2), 4),
], ids=['multitask_prompts', 'mpt'])
@pytest.mark.slow
def test_training_on_a_mixture_evaluates_per_task_and_writes_every_prompt(factory, rows, mixture, train_kwargs,
                                                                          tmp_path):
  assert multitask.resolve_tasks(MIXTURE) == NAMES
  kwargs = regroup(train_kwargs, data=dict(mixture_or_task_name=MIXTURE),
                   method=functools.partial(factory, tasks=MIXTURE), schedule=dict(train_steps=3))
  result = trainer.train(str(tmp_path), **kwargs)
  assert result.step == 3
  for name in NAMES:  # one evaluation per task, each under its own prompt
    assert 0 <= result.eval_metrics[f'{name}/accuracy'] <= 100 and np.isfinite(result.eval_metrics[f'{name}/loss'])
  final = tmp_path / (trainer.FINAL_PREFIX + multitask.MULTITASK_FILE)
  assert result.exported == str(final)
  assert (tmp_path / 'numpy_checkpoints' / 'checkpoint_3' / multitask.MULTITASK_FILE).exists()
  assert multitask.is_multitask_file(str(final))
  prompts = multitask.read_multitask_file(str(final), CFG)
  assert list(prompts) == list(NAMES)
  for t, (method, params) in enumerate(prompts.values()):
    assert method.shape == params['prompt'].shape == (rows, CFG.emb_dim)
    np.testing.assert_array_equal(params['prompt'], result.inference['prompts'][t])
  # `eval --prompt_file final_prompts.npz` on the mixture: a prompt bank, each task's rows under its own prompt,
  # the numbers of the run's own final evaluation.
  evaluated = evaluate_command.evaluate(model=kwargs['model'], data=kwargs['data'], source=PromptSource(str(final)))
  for name in NAMES:
    assert evaluated['metrics'][f'{name}/accuracy'] == pytest.approx(result.eval_metrics[f'{name}/accuracy'])
    assert evaluated['metrics'][f'{name}/loss'] == pytest.approx(result.eval_metrics[f'{name}/loss'], rel=1e-5)
