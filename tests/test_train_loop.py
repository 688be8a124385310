"""The train loop through `jaxprompt.train`, in process, on the t5x fixture model and the tiny TSV task of
tests/tiny_task.py (fixtures in conftest.py; tests/test_cli.py drives the same task through gin)."""
import functools
import json
import logging
import pathlib
import re

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import seqio
import tensorflow as tf

from jaxprompt.commands import configs, prompt_files
from jaxprompt.commands import train as trainer
from jaxprompt.data import pipeline as data_pipeline
from jaxprompt.errors import CheckpointError, ConfigError, DataError, PromptError, TrainingError
from jaxprompt.eval import evaluation as evaluate
from jaxprompt.methods.prompt_tuning import prompt_tuning
from jaxprompt.models.base import LossConfig
from jaxprompt.models.config import get_config
from jaxprompt.models.features import FEATURES
from jaxprompt.runtime import runtime as components
from jaxprompt.runtime.optim import make_optimizer
from jaxprompt.runtime.state import init_train_state
from jaxprompt.train import observability
from jaxprompt.train.checkpoints import StateCheckpointer
from tests.helpers import regroup
from tests.tiny_task import EMPTY_TASK, LABELS, LENGTHS, PROMPT_LENGTH

# ------------------------------------------------------------------------------------ training runs


def test_the_loop_turns_over_evaluates_checkpoints_and_exports(train_kwargs, tmp_path):
  """The inner loop's one run through the loop (the slow tests below resume, damage and compare runs).

  It evaluates every step and checkpoints every 2: an evaluation writes no checkpoint, only CHECKPOINT_PERIOD
  and the last step do."""
  result = trainer.train(
      str(tmp_path),
      **regroup(train_kwargs, schedule=dict(train_steps=3, checkpoint_period=2, eval_period=1),
                evaluation=dict(max_examples=4)))
  assert result.step == 3 and not result.preempted
  evals = [json.loads(line)['step'] for line in (tmp_path / observability.EVAL_HISTORY).read_text().splitlines()]
  assert evals == [1, 2, 3]
  assert _saved_steps(tmp_path) == [2, 3]
  assert sorted(p.name for p in (tmp_path / 'numpy_checkpoints').iterdir()) == ['checkpoint_2', 'checkpoint_3']
  assert np.isfinite(result.eval_metrics['loss']) and 'accuracy' in result.eval_metrics
  np.testing.assert_array_equal(np.load(result.exported), result.prompt)
  rows = [json.loads(line) for line in (tmp_path / observability.TRAIN_HISTORY).read_text().splitlines()]
  assert [r['step'] for r in rows] == [1, 2, 3]


def _saved_steps(model_dir: pathlib.Path) -> list[int]:
  return sorted(int(p.name) for p in (model_dir / 'checkpoints').iterdir() if p.name.isdigit())


@pytest.mark.slow
def test_an_eval_that_sets_a_new_best_is_saved_between_periods(train_kwargs, tmp_path):
  """With a best_metric, the steps written are the periodic ones, the last, and each eval beating every value
  saved before it (its state exists nowhere else); no other eval step."""
  schedule = dict(train_steps=5, eval_period=1, checkpoint_period=3)
  # 'loss' ranked highest-first: training lowers it, so later evals are mostly no new best.
  trainer.train(
      str(tmp_path),
      **regroup(train_kwargs, schedule=schedule, evaluation=dict(max_examples=4),
                checkpoints=dict(keep=10, best_metric='loss', best_mode='max')))
  evals = [json.loads(line) for line in (tmp_path / observability.EVAL_HISTORY).read_text().splitlines()]
  expected, best = [], None
  for row in evals:
    improves = best is None or row['loss'] > best
    if improves or row['step'] % 3 == 0 or row['step'] == 5:
      expected.append(row['step'])
      best = row['loss'] if improves else best
  assert len(expected) < len(evals)  # some eval steps were not saved: the rule is exercised both ways
  assert _saved_steps(tmp_path) == expected
  with StateCheckpointer(str(tmp_path), keep=10, best_metric='loss', best_mode='max') as ckpt:
    assert ckpt.best_step() == max(evals, key=lambda row: row['loss'])['step']


@pytest.mark.slow
def test_resume_is_bitwise_equal_to_an_uninterrupted_run(train_kwargs, tmp_path):
  # Inputs of 14-22 tokens in rows of 32, cut by length buckets of 4: batches of several shapes.
  train_kwargs = regroup(train_kwargs, data=dict(task_feature_lengths={'inputs': 32, 'targets': 8}, length_buckets=4))
  whole = trainer.train(str(tmp_path / 'whole'), **train_kwargs)  # 6 steps
  # Stopped at step 3 (a checkpoint), then resumed by a fresh call; evaluation off, so this also shows
  # that evaluating (the uninterrupted run evaluates at steps 3 and 6) leaves training untouched.
  quiet = regroup(train_kwargs, evaluation=dict(split=None))
  part = trainer.train(str(tmp_path / 'resumed'), **regroup(quiet, schedule=dict(train_steps=3)))
  assert part.step == 3
  resumed = trainer.train(str(tmp_path / 'resumed'), **quiet)
  assert (whole.step, resumed.step) == (6, 6)
  assert whole.prompt.dtype == np.float32 and whole.prompt.shape == (5, 32)
  np.testing.assert_array_equal(whole.prompt, resumed.prompt)
  assert not np.array_equal(whole.prompt, part.prompt)  # it did train between 3 and 6

  ckpt = StateCheckpointer(str(tmp_path / 'resumed'))
  assert ckpt.all_steps() == [3, 6]
  _, meta = ckpt.restore(_template_state(PROMPT_LENGTH))
  assert meta['data_position'] == 6
  ckpt.close()
  # The final prompt and each save's numpy copy are float32 [P, d].
  np.testing.assert_array_equal(np.load(tmp_path / 'whole' / trainer.FINAL_PROMPT), whole.prompt)
  np.testing.assert_array_equal(np.load(tmp_path / 'whole' / 'numpy_checkpoints' / 'checkpoint_6' / 'prompt.npy'),
                                whole.prompt)

  # Observability: metric histories, eval JSON, TensorBoard scalars, the curves PNG.
  run = tmp_path / 'whole'
  history = [json.loads(line) for line in (run / observability.TRAIN_HISTORY).read_text().splitlines()]
  assert [row['step'] for row in history] == [1, 2, 3, 4, 5, 6]
  assert all(np.isfinite(row['loss_per_token']) and row['learning_rate'] == pytest.approx(0.3) for row in history)
  evals = json.loads((run / observability.EVAL_LATEST).read_text())
  assert evals['step'] == 6 and evals['num_examples'] == 12 and 0 <= evals['accuracy'] <= 100
  assert whole.eval_metrics['loss'] == pytest.approx(evals['loss'])
  assert (run / observability.CURVES).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert {'train/loss', 'train/grad_norm', 'train/param_norm', 'train/learning_rate', 'eval/accuracy'} <= _tb_tags(run)


def _template_state(prompt_length):
  """A TrainState of the trainer's structure (default optimizer), as a restore template."""
  prompt = {'prompt': jnp.zeros((prompt_length, 32), jnp.float32)}
  return init_train_state(prompt, make_optimizer().tx, jax.random.PRNGKey(0))


def _tb_tags(run_dir: pathlib.Path) -> set:
  from tensorflow.core.util import event_pb2  # pylint: disable=g-import-not-at-top
  tags = set()
  for path in run_dir.glob('events.out.tfevents.*'):
    for record in tf.data.TFRecordDataset(str(path)):
      tags |= {v.tag for v in event_pb2.Event.FromString(record.numpy()).summary.value}
  return tags


@pytest.mark.slow
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')  # orbax's unread future
def test_resume_skips_a_damaged_latest_step_and_keeps_it(train_kwargs, tmp_path, caplog):
  """A run whose newest checkpoint is damaged resumes from the newest intact one, with a warning naming the
  damaged step, leaves its files as they were, and still ends with the uninterrupted run's prompt."""
  kwargs = regroup(train_kwargs, evaluation=dict(split=None))  # 6 steps
  whole = trainer.train(str(tmp_path / 'whole'), **kwargs)
  run = tmp_path / 'run'
  trainer.train(str(run), **kwargs)
  damaged = run / 'checkpoints' / '6'
  for path in (damaged / 'state').rglob('*'):
    if path.is_file() and path.stat().st_size > 0 and 'metadata' not in path.name.lower():
      path.write_bytes(path.read_bytes()[:8])  # a truncated array file
  before = {p: p.read_bytes() for p in damaged.rglob('*') if p.is_file()}
  with caplog.at_level(logging.WARNING):
    resumed = trainer.train(str(run), **kwargs)
  assert resumed.step == 6
  np.testing.assert_array_equal(resumed.prompt, whole.prompt)  # steps 4..6 replayed exactly from step 3
  assert str(damaged) in caplog.text
  assert {p: p.read_bytes() for p in damaged.rglob('*') if p.is_file()} == before  # nothing lost or rewritten


@pytest.mark.slow
def test_an_overflowing_update_is_never_saved_or_exported(train_kwargs, tmp_path):
  """sgd with a huge learning rate (and a loss scaled up 100x) at a run's last step: the loss and gradient are
  finite, the updated prompt is not. Training stops there; nothing is saved at that step, final_prompt.npy stays
  the last finite one, and a resume starts from the last finite checkpoint."""
  two, three = (regroup(train_kwargs, evaluation=dict(split=None), schedule=dict(train_steps=n, checkpoint_period=2))
                for n in (2, 3))
  first = trainer.train(str(tmp_path), optimizer=make_optimizer(optax.sgd, learning_rate=0.3), **two)
  final = (tmp_path / trainer.FINAL_PROMPT).read_bytes()
  with pytest.raises(TrainingError, match=r'non-finite update at step 3 .*the last good checkpoint, step 2, is kept'):
    trainer.train(str(tmp_path), optimizer=make_optimizer(optax.sgd, learning_rate=1e38),
                  loss=LossConfig(loss_normalizing_factor=0.01), **three)
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == ['2']
  assert (tmp_path / trainer.FINAL_PROMPT).read_bytes() == final
  resumed = trainer.train(str(tmp_path), optimizer=make_optimizer(optax.sgd, learning_rate=0.3), **three)
  assert resumed.step == 3 and np.isfinite(resumed.prompt).all() and not np.array_equal(resumed.prompt, first.prompt)


def test_export_final_keeps_the_final_files_when_the_prompt_is_not_finite(tmp_path):
  method = prompt_tuning(get_config('t5x_tiny'), length=2)
  good = {'prompt': np.ones((2, 32), np.float32)}
  path = trainer.export_final(method, good, str(tmp_path))['prompt.npy']
  with pytest.raises(TrainingError, match=rf'not writing the final files in {tmp_path}: NaN/inf in prompt.npy'):
    trainer.export_final(method, {'prompt': np.full((2, 32), np.inf, np.float32)}, str(tmp_path))
  np.testing.assert_array_equal(np.load(path), good['prompt'])


@pytest.mark.slow
@pytest.mark.usefixtures('clean_gin')
def test_a_refused_resume_writes_nothing(train_kwargs, tmp_path):
  """Another BATCH_SIZE or PROMPT_LENGTH is refused before config.gin (which export reads) or anything else in
  MODEL_DIR is written."""
  kwargs = regroup(train_kwargs, evaluation=dict(split=None), schedule=dict(train_steps=1, checkpoint_period=1))
  gin.parse_config('jaxprompt.make_optimizer.max_grad_norm = 5.0')
  trainer.train(str(tmp_path), **kwargs)
  assert 'max_grad_norm = 5.0' in (tmp_path / 'config.gin').read_text()
  before = {p: p.read_bytes() for p in tmp_path.rglob('*') if p.is_file()}
  gin.parse_config('jaxprompt.make_optimizer.max_grad_norm = 7.0')
  resume = regroup(kwargs, schedule=dict(train_steps=2))
  with pytest.raises(ConfigError, match='was trained with BATCH_SIZE=4'):
    trainer.train(str(tmp_path), **regroup(resume, data=dict(batch_size=2)))
  with pytest.raises(CheckpointError, match=r'trainable/prompt is \(5, 32\) there and \(6, 32\) in the template'):
    trainer.train(str(tmp_path), **regroup(resume, method=functools.partial(prompt_tuning, length=6)))
  assert {p: p.read_bytes() for p in tmp_path.rglob('*') if p.is_file()} == before


def test_empty_train_split_names_task_and_split(train_kwargs, empty_task, tmp_path):
  with pytest.raises(DataError, match=rf"{EMPTY_TASK}.*'train'.*empty"):
    trainer.train(str(tmp_path), **regroup(train_kwargs, data=dict(mixture_or_task_name=empty_task)))


def test_unwritable_model_dir_fails_before_anything_runs(train_kwargs, tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a directory')
  with pytest.raises(CheckpointError, match=rf'MODEL_DIR {blocker}/run is not writable'):
    trainer.train(str(blocker / 'run'), **train_kwargs)


def test_model_config_must_match_the_checkpoint(train_kwargs, tmp_path):
  with pytest.raises(
      CheckpointError, match=r"parameter '.*' has shape \[.*\] in the checkpoint but the model "
      r'expects \[.*\]|do not match the model'):
    trainer.train(str(tmp_path), **regroup(train_kwargs, model=dict(config=get_config('test_tiny'))))
  assert not (tmp_path / 'checkpoints').exists() or not any((tmp_path / 'checkpoints').iterdir())


def test_missing_settings_name_their_gin_macro(train_kwargs, tmp_path):
  with pytest.raises(ConfigError, match='MODEL_DIR is not set'):
    trainer.train(None, **train_kwargs)
  with pytest.raises(ConfigError, match='INITIAL_CHECKPOINT_PATH is not set'):
    trainer.train(str(tmp_path), **regroup(train_kwargs, model=dict(checkpoint=None)))
  with pytest.raises(ConfigError, match='TRAIN_STEPS is not set'):
    trainer.train(str(tmp_path), **dict(train_kwargs, schedule=None))  # nor bound by gin
  assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------ pieces


def test_features_match_seqio_encdec_converter(tiny_task):
  examples, _ = data_pipeline.read_examples(tiny_task, LENGTHS, 'validation')
  ours = data_pipeline.to_features([e['inputs'] for e in examples], [e['targets'] for e in examples], LENGTHS)
  ds = tiny_task.get_dataset(LENGTHS, split='validation', shuffle=False, num_epochs=1)
  theirs = list(seqio.EncDecFeatureConverter(pack=False)(ds, LENGTHS).as_numpy_iterator())
  for key in FEATURES:
    np.testing.assert_array_equal(ours[key], np.stack([t[key] for t in theirs]).astype(ours[key].dtype), key)
  batches = list(data_pipeline.padded_batches(ours, 5))
  assert [real for _, real in batches] == [5, 5, 2]
  assert not batches[-1][0]['encoder_input_tokens'][2:].any()  # padding rows are all zero


def test_a_split_smaller_than_a_batch_is_padded_to_a_power_of_two_multiple_of_the_data_axis():
  features = {'x': np.arange(1, 6, dtype=np.int32)[:, None]}  # 5 rows
  widths = lambda batch_size, multiple: [(len(b['x']), real)
                                         for b, real in data_pipeline.padded_batches(features, batch_size, multiple)]
  assert widths(128, 2) == [(8, 5)]  # 2 -> 4 -> 8 rows, not 128
  assert widths(128, 1) == [(8, 5)] and widths(128, 5) == [(5, 5)] and widths(6, 4) == [(6, 5)]  # capped at the batch
  assert widths(4, 2) == [(4, 4), (4, 1)]  # a split of a batch or more: whole batches, as before
  assert widths(128, None) == [(128, 5)]
  (batch, _), = data_pipeline.padded_batches(features, 128, 2)
  assert batch['x'][:5, 0].tolist() == [1, 2, 3, 4, 5] and not batch['x'][5:].any()


def test_label_candidates_must_fit_the_target_length(tiny_task):
  vocab = data_pipeline.targets_vocabulary(tiny_task)
  rows = evaluate.label_candidates(LABELS, vocab, 8)
  assert rows.shape == (2, 8) and all(row[row > 0][-1] == 1 for row in rows)  # each ends in EOS
  with pytest.raises(ConfigError, match=r"label 'negative' is \d+ tokens with EOS but TASK_FEATURE_LENGTHS"):
    evaluate.label_candidates(LABELS, vocab, 2)


def test_vocabulary_must_fit_the_embedding_table(tiny_task):
  with pytest.raises(ConfigError, match=r"uses a vocabulary of 32100 ids but the model embeds only 128"):
    configs.check_vocabulary(configs.vocabulary(), get_config('t5x_tiny'), 'glue')


def test_prompt_files_are_checked(tmp_path, fixtures_dir):
  released = fixtures_dir / 'pretrained_prompts_t5_1_1_lm100k_base' / 'sst2.npy'
  base = get_config('t5_1_1_lm100k_base')
  prompt = prompt_files.load_prompt(prompt_file=str(released), checkpoint=None, step=None, prompt_length=None,
                                    embed_dim=base.emb_dim)
  assert prompt.shape == (100, 768) and prompt.dtype == np.float32
  with pytest.raises(PromptError, match=r'sst2.npy has shape \(100, 768\) but the prompt shape is \(100, 32\)'):
    prompt_files.load_prompt(prompt_file=str(released), checkpoint=None, step=None, prompt_length=None, embed_dim=32)
  ints = tmp_path / 'ints.npy'
  np.save(ints, np.zeros((5, 32), np.int32))
  with pytest.raises(PromptError, match=r'ints.npy has dtype int32'):
    prompt_files.load_prompt(prompt_file=str(ints), checkpoint=None, step=None, prompt_length=None, embed_dim=32)
  pickled = tmp_path / 'pickled.npy'
  pickled.write_bytes(__import__('pickle').dumps(np.zeros((5, 32), np.float32)))
  with pytest.raises(PromptError, match=r'pickled.npy is not a .npy file'):
    prompt_files.load_prompt(prompt_file=str(pickled), checkpoint=None, step=None, prompt_length=None, embed_dim=32)
  with pytest.raises(ConfigError, match='exactly one of --prompt_file'):
    prompt_files.load_prompt(prompt_file=str(ints), checkpoint=str(tmp_path), step=None, prompt_length=None,
                             embed_dim=32)


def test_observer_keeps_histories_consistent_after_a_resume(tmp_path):
  obs = observability.TrainObserver(str(tmp_path), total_steps=4, start_step=0, log_period=1, progress_bar=False)
  for step in range(1, 5):
    obs.step(
        step, {
            'loss': 8.0 / step, 'weight_sum': 4.0, 'token_accuracy': 0.1 * step, 'grad_norm': 1.0, 'param_norm': 2.0,
            'learning_rate': 0.3
        })
  obs.eval(4, {'loss': 1.5, 'accuracy': 75.0, 'num_examples': 12})
  obs.close()
  rows = [json.loads(line) for line in (tmp_path / observability.TRAIN_HISTORY).read_text().splitlines()]
  assert [r['step'] for r in rows] == [1, 2, 3, 4]
  assert [r['loss_per_token'] for r in rows] == pytest.approx([2.0, 1.0, 2 / 3, 0.5])
  # Resuming from step 2 drops what was logged after it (it is about to be redone).
  observability.TrainObserver(str(tmp_path), total_steps=4, start_step=2, log_period=1,
                              progress_bar=False).close(plot=False)
  rows = [json.loads(line) for line in (tmp_path / observability.TRAIN_HISTORY).read_text().splitlines()]
  assert [r['step'] for r in rows] == [1, 2]
  assert (tmp_path / observability.EVAL_HISTORY).read_text() == ''
  assert observability.plot_curves(str(tmp_path)).endswith(observability.CURVES)


def test_progress_bar_on_a_terminal_shows_rate_loss_and_eta(tmp_path, capsys):
  obs = observability.TrainObserver(str(tmp_path), total_steps=4, start_step=1, log_period=2, progress_bar=True)
  for step in (2, 3, 4):
    obs.step(step, {'loss': 4.0, 'weight_sum': 2.0, 'token_accuracy': 0.5, 'learning_rate': 0.3})
  obs.close(plot=False)
  err = capsys.readouterr().err
  assert re.search(r'4/4 \[[\d:]+<[\d:]+, +[\d.]+ ?(step/s|s/step), loss=2\.0000\]', err), err


def test_hf_checkpoints_are_told_from_t5x_ones(tmp_path, fixtures_dir):
  (tmp_path / 'model.safetensors').write_bytes(b'')
  assert components.is_hf_checkpoint(str(tmp_path))
  assert components.is_hf_checkpoint(str(tmp_path / 'model.safetensors'))
  assert not components.is_hf_checkpoint(str(fixtures_dir / 't5x_tiny' / 'classic_checkpoint_0'))
