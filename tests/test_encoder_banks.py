"""Multi-task prompts, prompt banks and fingerprints on the encoder-only family, each task with its own head
(`jaxprompt.methods.task_heads`, `jaxprompt.models.task_heads`): a bank of six single-task runs (two classification
tasks of different label counts, one regression, three tagging; input prompts of 2, 3 and 5 rows and P-tuning v2
prefixes) serves a mixed batch of text pairs and each row equals its task run alone; its loss trains each row's own
prompt rows and heads only; multi-task training reaches only the batch's tasks' prompts and heads; a
multi-task run's per-task file pairs serve each task alone; a BERT prompt is refused on a RoBERTa or a T5."""
import dataclasses

import jax
import numpy as np
import pytest

from jaxprompt.commands import model_check
from jaxprompt.errors import ConfigError, PromptError
from jaxprompt.formats import fingerprint_files
from jaxprompt.methods import multitask, registry
from jaxprompt.methods.prefix_tuning import PrefixTuning
from jaxprompt.methods.prompt_tuning import PromptTuning
from jaxprompt.methods.task_heads import (
    WithTaskHeads,
    build_head_bank,
    read_pair,
    read_task_heads,
    task_file,
    with_task_heads,
)
from jaxprompt.methods.with_head import HEAD_FILE, WithHead
from jaxprompt.models import families
from jaxprompt.models import fingerprint as fingerprint_lib
from jaxprompt.models.heads import HeadConfig
from jaxprompt.models.task_heads import TaskHeads, row_answers
from tests.encoder_helpers import fit, head_batch, randomized, tiny, write_files
from tests.method_helpers import save_run

HEADS = {
    'sst2': HeadConfig('classification', 2, use_pooler=True, dropout=0.0),
    'mnli': HeadConfig('classification', 3, dropout=0.0),  # RoBERTa's two-layer head on row 0
    'stsb': HeadConfig('regression', dropout=0.0),
    'ner': HeadConfig('tagging', 3, dropout=0.0),
    'pos': HeadConfig('tagging', 4, dropout=0.0),
    'chunk': HeadConfig('tagging', 3, dropout=0.0),
}


def _single_runs(config, frozen, taggers: bool = False):
  """{task: (WithHead, params)}: prompt tuning (3 rows), a P-tuning v2 prefix (2 rows), prompt tuning (5 rows);
  with `taggers` three tagging runs too: prompt tuning (2 and 5 rows) and a P-tuning v2 prefix (3 rows)."""
  inners = {
      'sst2': PromptTuning(length=3, embed_dim=config.emb_dim),
      'mnli': PrefixTuning.for_config(config, length=2, kinds=('encoder_self',), projection=False),
      'stsb': PromptTuning(length=5, embed_dim=config.emb_dim),
  }
  if taggers:
    inners |= {
        'ner': PromptTuning(length=2, embed_dim=config.emb_dim),
        'pos': PromptTuning(length=5, embed_dim=config.emb_dim),
        'chunk': PrefixTuning.for_config(config, length=3, kinds=('encoder_self',), projection=False),
    }
  out = {}
  for seed, (task, inner) in enumerate(inners.items()):
    method = WithHead.for_config(config, inner, HEADS[task])
    out[task] = (method, randomized(jax.eval_shape(method.init, jax.random.PRNGKey(seed), frozen), seed))
  return out


def _mixed_batch(ids, kind: str = 'classification'):
  batch = head_batch(kind, seed=3, batch=len(ids), length=8)
  return {k: v for k, v in batch.items() if k.startswith('encoder_')} | {'task_ids': np.asarray(ids, np.int32)}


def _pairs(batch):
  """`batch` as text pairs: the second half of each row's real tokens has token type 1 (which must stay with its
  token wherever a row's prompt puts it)."""
  valid = batch['encoder_input_mask'] > 0
  second = np.arange(valid.shape[1]) >= valid.sum(1, keepdims=True) // 2
  return batch | {'encoder_token_types': (second & valid).astype(np.int32)}


def test_a_bank_of_six_runs_with_heads_serves_a_mixed_batch_as_each_task_alone(tmp_path):
  config, frozen = tiny()
  runs = _single_runs(config, frozen, taggers=True)
  read = {}
  for task, (method, params) in runs.items():  # each run's file pair, written and read back
    paths = write_files(tmp_path / task, method.numpy_copy(params))
    main = next(p for n, p in paths.items() if n != HEAD_FILE)
    read[task] = read_pair(main, paths[HEAD_FILE], registry.ReadContext(config))
    assert dataclasses.replace(read[task][0].head, dropout=0.0) == HEADS[task]  # a file keeps no dropout
  bank, tree = build_head_bank(read, config)
  assert bank.task_names == ('sst2', 'mnli', 'stsb', 'ner', 'pos', 'chunk') and isinstance(bank.head, TaskHeads)
  ids = [2, 0, 1, 3, 4, 5, 3, 4, 2, 5, 1]  # row 1 is batch padding
  batch = _pairs(_mixed_batch(ids))
  rows = row_answers(
      jax.jit(families.build_model(config, bank).predict_labels)(frozen, tree, batch), bank.task_names,
      batch['task_ids'])
  alone = {
      task: jax.tree.map(np.asarray,
                         jax.jit(families.build_model(config, method).predict_labels)(
                             frozen, params, batch)) for task, (method, params) in runs.items()
  }
  for i, t in enumerate(ids):
    want_pred, want_scores = alone[bank.task_names[t]]
    assert rows[i][1].shape == want_scores[i].shape  # [2], [3] logits; a regression value; [8, 3|4] tag logits
    np.testing.assert_allclose(rows[i][1], want_scores[i], rtol=0, atol=1e-5)
    np.testing.assert_allclose(rows[i][0], want_pred[i], rtol=0, atol=1e-5)
  assert np.ptp([r[1] for r, t in zip(rows, ids) if t == 2]) > 1e-3  # the regression rows differ: not a constant


def test_a_banks_loss_over_prompts_of_several_lengths_trains_each_rows_own_prompt_rows_and_head():
  config, frozen = tiny()
  runs = _single_runs(config, frozen, taggers=True)
  bank, tree = build_head_bank({t: runs[t] for t in ('sst2', 'mnli', 'ner', 'pos', 'chunk')}, config)
  ids = np.asarray([2, 0, 3, 4, 0, 2, 3, 4], np.int32)  # ner (2 rows), sst2 (3), pos (5), chunk (a 3-row prefix)
  batch = _pairs(head_batch(
      'tagging', seed=5, batch=len(ids))) | {'task_ids': ids, 'labels': np.asarray([0, 1, 0, 0, 1, 0, 0, 0], np.int32)}
  model = families.build_model(config, bank)
  loss_and_grads = jax.jit(jax.value_and_grad(lambda p: model.loss_fn(frozen, p, batch)[0]))
  losses, params = [], tree
  for _ in range(3):
    loss, grads = loss_and_grads(params)
    if not losses:
      first = jax.tree.map(lambda g: np.abs(np.asarray(g)), grads)
    losses.append(float(loss))
    params = jax.tree.map(lambda p, g: p - 0.02 * g, params, grads)
  assert losses[2] < losses[1] < losses[0]
  used = {t: e.input_length for t, e in enumerate(bank.inner.entries)}  # each task's prompt rows; then padding
  for t, task in enumerate(bank.task_names):
    rows = first['prompts'][t].sum(-1)
    mine = rows[:used[t]]
    assert ((mine > 0).all() if t in ids else not mine.any()) and not rows[used[t]:].any(), (task, rows)
    assert all(g.any() == (t in ids) for g in jax.tree.leaves(first['head'][task])), task
  prefix = first['kv']['encoder_self']['key'].sum((0, 3, 4))  # [tasks, 3 rows]: chunk's 3 rows, mnli's last 2
  assert (prefix[4] > 0).all() and not prefix[1].any()  # mnli (task 1) is not in the batch


@pytest.fixture(scope='module')
def multitask_run():
  config, _ = tiny()
  inner = multitask.MultiTaskPrompts(tasks=('sst2', 'stsb', 'mnli'), config=config, length=3, mode='concat',
                                     task_length=2)
  method = WithTaskHeads.for_config(config, inner, TaskHeads.of({t: HEADS[t] for t in inner.task_names}))
  return method, randomized(jax.eval_shape(method.init, jax.random.PRNGKey(0), None), 4)


def _training_batch():
  return _mixed_batch([0, 2, 2, 0, 2]) | {
      'labels': np.asarray([1, 2, 0, 0, 1], np.int32),
      'label_values':
          np.asarray([9, 9, 9, 9, 9], np.float32)  # every row's regression label: none is an stsb row
  }


def test_multitask_training_reaches_only_the_batchs_prompts_and_heads(multitask_run):
  config, frozen = tiny()
  method, params = multitask_run
  model = families.build_model(config, method)
  assert set(model.FEATURES) == {'encoder_input_tokens', 'encoder_input_mask', 'labels', 'label_values'}
  grads = jax.jit(jax.grad(lambda p: model.loss_fn(frozen, p, _training_batch())[0]))(params)
  assert not any(np.asarray(g).any() for g in jax.tree.leaves(grads['head']['stsb']))  # task 1 absent
  for task in ('sst2', 'mnli'):
    assert all(np.asarray(g).any() for g in jax.tree.leaves(grads['head'][task])), task
  task_grad = np.asarray(grads['task_prompts'])
  assert not task_grad[1].any() and task_grad[0].any() and task_grad[2].any()
  assert np.asarray(grads['shared_prompt']).any()


@pytest.mark.slow
def test_the_multitask_loss_is_each_tasks_own_loss_summed(multitask_run):
  config, frozen = tiny()
  method, params = multitask_run
  batch = _training_batch()
  loss, metrics = jax.jit(families.build_model(config, method).loss_fn)(frozen, params, batch)
  total = 0.0
  for t, task in enumerate(method.task_names):
    one, one_params = method.single(params, task)
    mine = batch['task_ids'] == t
    rows = {k: v[mine] for k, v in batch.items() if k != 'task_ids'}
    if mine.any():
      total += float(jax.jit(families.build_model(config, one).loss_fn)(frozen, one_params, rows)[0])
  np.testing.assert_allclose(float(loss), total, rtol=1e-5)
  assert float(metrics['weight_sum']) == 4.0  # row 1 is batch padding


@pytest.mark.slow
def test_a_multitask_runs_files_serve_each_task_alone_and_together(multitask_run, tmp_path):
  config, frozen = tiny()
  method, params = multitask_run
  files = method.numpy_copy(params)
  assert set(files) == {multitask.MULTITASK_FILE
                       } | {task_file(t, n) for t in method.task_names for n in ('prompt.npy', HEAD_FILE)}
  paths = write_files(tmp_path, files)
  context = registry.ReadContext(config)
  batch = _mixed_batch([0, 1, 2, 1, 0, 2])
  together = jax.jit(families.build_model(config, method).predict_labels)(frozen, params, batch)
  # The step dir read back: prompts.npz (a bank) with each task's head joined.
  bank, tree = read_task_heads(*registry.from_arrays(registry.read_arrays(paths['prompts.npz']), context), tmp_path,
                               context)
  served = jax.jit(families.build_model(config, bank).predict_labels)(frozen, tree, batch)
  for t, task in enumerate(method.task_names):
    np.testing.assert_allclose(served[task][1], together[task][1], atol=2e-5)
    one, one_params = read_pair(paths[task_file(task, 'prompt.npy')], paths[task_file(task, HEAD_FILE)], context)
    mine = batch['task_ids'] == t
    alone = jax.jit(families.build_model(config,
                                         one).predict_labels)(frozen, one_params,
                                                              {k: v[mine] for k, v in batch.items() if k != 'task_ids'})
    np.testing.assert_allclose(alone[1], np.asarray(together[task][1])[mine], atol=2e-5)


def test_the_gin_factory_and_one_line_errors():
  config, frozen = tiny()
  factory = lambda c, e: multitask.multitask_prompts(c, e, tasks=['a', 'b'], length=2)
  method = with_task_heads(config, method=factory, heads={'a': {'kind': 'regression'}, 'b': {'num_labels': 4}})
  assert method.head.configs == (HeadConfig('regression'), HeadConfig('classification', 4))
  with pytest.raises(ConfigError, match=r"heads are for \['a'\] but the method trains tasks \['a', 'b'\]"):
    with_task_heads(config, method=factory, heads={'a': {'kind': 'regression'}})
  with pytest.raises(ConfigError, match=r'cannot share a batch \(a: multiple_choice, b: classification\)'):
    TaskHeads.of({'a': HeadConfig('multiple_choice'), 'b': HeadConfig('classification', 2)})
  with pytest.raises(ConfigError, match=r"per-task heads are for tasks \['b', 'a'\] but MultiTaskPrompts serves"):
    WithTaskHeads.for_config(config, method.inner, TaskHeads.of({'b': HEADS['sst2'], 'a': HEADS['stsb']}))
  runs = _single_runs(config, frozen)
  with pytest.raises(PromptError, match="prompt 'x': a bank with heads holds one-task runs"):
    build_head_bank({'x': (runs['sst2'][0].inner, {})}, config)


def test_a_bert_prompt_and_head_are_refused_on_a_roberta_or_a_t5(tmp_path):
  fingerprints = {}
  for name in ('bert_test_tiny', 'roberta_test_tiny', 't5x_test_tiny'):  # a fingerprint reads the embedding alone
    config = families.named_config(name)
    frozen = tiny()[1] if name == 'bert_test_tiny' else {
        'token_embedder': {'embedding': np.random.RandomState(0).normal(size=(config.vocab_size, config.emb_dim))}
    }
    fingerprints[name] = (config, frozen,
                          fingerprint_lib.model_fingerprint(config, None, model_check.token_embedding(frozen)))
  bert, roberta, t5 = (fingerprints[n][2] for n in ('bert_test_tiny', 'roberta_test_tiny', 't5x_test_tiny'))
  assert 'position_offset=0, type_vocab_size=2' in fingerprint_lib.describe(bert)
  assert 'family=encoder_only' in fingerprint_lib.describe(roberta) and 'position_offset=2' in fingerprint_lib.describe(
      roberta)
  assert 'position_offset' not in fingerprint_lib.describe(t5)  # T5's records (and ids) are unchanged
  config = fingerprints['bert_test_tiny'][0]
  method, params = _single_runs(*tiny())['sst2']
  paths = write_files(tmp_path, method.numpy_copy(params))
  fingerprint_files.write(tmp_path / fingerprint_files.STEP_FILE, bert)  # the pair shares its step dir's record
  sources = {'prompt': paths['prompt.npy'], 'head': paths[HEAD_FILE]}
  assert model_check.check_prompt_sources(sources, None, config, None,
                                          fingerprints['bert_test_tiny'][1]) == {'prompt': True, 'head': True}
  for name, differs in (('roberta_test_tiny', 'position_offset 0 vs 2'), ('t5x_test_tiny', 'family encoder_only vs')):
    other_config, other_frozen, _ = fingerprints[name]
    for source in sources.values():
      with pytest.raises(PromptError, match=f'{source} was trained on model .*family=encoder_only.*{differs}'):
        model_check.check_prompt_sources({'': source}, None, other_config, None, other_frozen)


@pytest.mark.slow
def test_multitask_heads_train_and_the_checkpointers_step_dir_reads_back_as_the_bank(multitask_run, tmp_path):
  config, frozen = tiny()
  method, _ = multitask_run
  model = families.build_model(config, method)
  batch = _training_batch() | {'label_values': np.asarray([0, 0, 0, 0, 0], np.float32)}
  state, first, last = fit(model, frozen, batch, steps=40)
  assert last < 0.2 * first  # the batch's tasks' prompts and heads fit their labels
  step_dir = save_run(tmp_path / 'run', method, state) / 'numpy_checkpoints' / 'checkpoint_3'
  context = registry.ReadContext(config)
  bank, tree = read_task_heads(*registry.from_arrays(registry.read_arrays(step_dir / 'prompts.npz'), context), step_dir,
                               context)
  served = jax.jit(families.build_model(config, bank).predict_labels)(frozen, tree, batch)
  trained = jax.jit(model.predict_labels)(frozen, state.trainable, batch)
  for task in method.task_names:
    np.testing.assert_allclose(served[task][1], trained[task][1], atol=2e-5)
  labels = [served['sst2'][0][i] if t == 0 else served['mnli'][0][i] for i, t in enumerate(batch['task_ids'])]
  np.testing.assert_array_equal(np.asarray(labels)[[0, 2, 3, 4]], batch['labels'][[0, 2, 3, 4]])  # row 1: padding
