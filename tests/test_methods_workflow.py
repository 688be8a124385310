"""Every method through the same workflow: train (prompt-only checkpoints, exact resume), the final inference
file, `export`, and `eval` / `infer` from that file with the metrics training reported."""
import functools

import numpy as np
import pytest

from jaxprompt.commands import evaluate as evaluate_lib
from jaxprompt.commands import export as export_lib
from jaxprompt.commands import infer as infer_lib
from jaxprompt.commands import train as trainer
from jaxprompt.commands.groups import PromptSource
from jaxprompt.errors import UsageError
from jaxprompt.formats.npy_io import read_npz
from jaxprompt.methods.p_tuning import p_tuning
from jaxprompt.methods.per_layer_prompts import per_layer_prompts
from jaxprompt.methods.prefix_tuning import p_tuning_v2, prefix_tuning
from tests.helpers import assert_trees_equal, regroup

METHODS = {
    'p_tuning': (functools.partial(p_tuning, length=4, encoder='mlp', hidden=16), 'final_prompt.npy'),
    'per_layer_prompts': (functools.partial(per_layer_prompts, length=4, mode='add'), 'final_per_layer_prompts.npz'),
    'prefix_tuning': (functools.partial(prefix_tuning, length=3, hidden=16), 'final_prefix.npz'),
    'p_tuning_v2': (functools.partial(p_tuning_v2, length=3), 'final_prefix.npz'),
}


def _common(train_kwargs, max_examples):
  """eval / infer's groups: the model and task of the training run, at most `max_examples` of the split."""
  return regroup({k: train_kwargs[k] for k in ('model', 'data')}, data=dict(max_examples=max_examples))


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(METHODS))
def test_train_export_and_evaluate_every_method(name, train_kwargs, tmp_path):
  factory, final = METHODS[name]
  kwargs = regroup(train_kwargs, method=factory, schedule=dict(train_steps=2, checkpoint_period=2, eval_period=2),
                   evaluation=dict(max_examples=8))
  result = trainer.train(str(tmp_path / 'run'), **kwargs)
  # The summary names the method's final file, and `prompt_file` is it for every method (what --prompt_file takes).
  assert result.final_files == {final[len(trainer.FINAL_PREFIX):]: str(tmp_path / 'run' / final)}
  assert result.prompt_file == result.exported == str(tmp_path / 'run' / final)
  trained = result.eval_metrics
  # eval reads the final inference file (a checkpoint dir: the prefix test below) and scores what training did.
  metrics = evaluate_lib.evaluate(**_common(train_kwargs, 8), source=PromptSource(result.exported))['metrics']
  assert metrics['accuracy'] == trained['accuracy']
  np.testing.assert_allclose(metrics['loss'], trained['loss'], rtol=1e-5)
  out = tmp_path / ('exported.npy' if final.endswith('.npy') else 'exported.npz')
  written = export_lib.export(str(out), checkpoint=str(tmp_path / 'run'))
  assert written['output'] == str(out)
  if final.endswith('.npz'):
    assert_trees_equal(read_npz(out), read_npz(result.exported))
  records = infer_lib.infer(str(tmp_path / 'predictions.jsonl'), **_common(train_kwargs, 2),
                            source=PromptSource(str(out)))
  assert len(records) == 2 and all(isinstance(r['prediction'], str) for r in records)


@pytest.mark.slow
def test_prefix_resumes_exactly_and_exports_safetensors(train_kwargs, tmp_path):
  factory = functools.partial(prefix_tuning, length=3, hidden=16, dropout=0.1)
  kwargs = regroup(train_kwargs, method=factory, evaluation=dict(split=None), schedule=dict(
      train_steps=4, checkpoint_period=2), model=dict(config=train_kwargs['model'].config.replace(dropout_rate=0.1)))
  whole = trainer.train(str(tmp_path / 'whole'), **kwargs)
  trainer.train(str(tmp_path / 'resumed'), **regroup(kwargs, schedule=dict(train_steps=2)))
  resumed = trainer.train(str(tmp_path / 'resumed'), **kwargs)
  assert_trees_equal(resumed.trainable, whole.trainable)  # bit for bit, dropout rng included
  path = export_lib.export(str(tmp_path / 'prefix.safetensors'), checkpoint=str(tmp_path / 'whole'))['output']
  # The .safetensors export and the training dir's own numpy copy score the same.
  metrics = [
      evaluate_lib.evaluate(**_common(train_kwargs, 4), source=source)['metrics']
      for source in (PromptSource(prompt_file=path), PromptSource(checkpoint=str(tmp_path / 'whole')))
  ]
  assert metrics[0] == metrics[1]
  with pytest.raises(UsageError, match=r'exports as \.npz or \.safetensors'):
    export_lib.export(str(tmp_path / 'prefix.npy'), checkpoint=str(tmp_path / 'whole'))


@pytest.mark.slow
def test_a_methods_own_dropout_trains_even_when_the_network_has_none(fixtures_dir):
  import jax  # pylint: disable=g-import-not-at-top

  from jaxprompt.checkpoints import load_t5x_checkpoint  # pylint: disable=g-import-not-at-top
  from jaxprompt.models.config import get_config  # pylint: disable=g-import-not-at-top
  from jaxprompt.models.families import build_model  # pylint: disable=g-import-not-at-top
  from jaxprompt.runtime import optim, step  # pylint: disable=g-import-not-at-top
  from jaxprompt.runtime.state import init_train_state  # pylint: disable=g-import-not-at-top
  from tests.method_helpers import random_batch  # pylint: disable=g-import-not-at-top
  cfg = get_config('t5x_tiny')
  assert cfg.dropout_rate == 0
  frozen = load_t5x_checkpoint(str(fixtures_dir / 't5x_tiny' / 'classic_checkpoint_0'))
  batch = random_batch()
  losses = []
  for rate in (0.0, 0.5):
    model = build_model(cfg, prefix_tuning(cfg, length=3, hidden=16, dropout=rate))
    trainable = model.method.init(jax.random.PRNGKey(0), frozen)
    optimizer = optim.make_optimizer()
    state = init_train_state(trainable, optimizer.tx, jax.random.PRNGKey(1))
    _, metrics = jax.jit(lambda s, b, m=model, o=optimizer: step.train_step(m, o, s, frozen, b))(state, batch)
    eval_loss = jax.jit(lambda t, m=model: m.loss_fn(frozen, t, batch)[0])(trainable)
    losses.append((float(metrics['loss']), float(eval_loss)))
  assert losses[0][0] == pytest.approx(losses[0][1], rel=1e-6)  # no dropout: the training loss is the eval loss
  assert losses[1][0] != pytest.approx(losses[1][1], rel=1e-3)  # prefix dropout on, with its own rng
