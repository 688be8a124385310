"""The prompt trainer, in process, on the t5x fixture model (vocab 128) and a tiny TSV task.

The fixture model has no real vocabulary (t5x used a 128-id PassThroughVocabulary), so the tests train a
SentencePiece model of ~40 pieces on the task's own text (< 1 s) and use it without extra ids: every token id
then indexes the fixture's 128-row embedding table. `make_tiny_task` and `write_tiny_gin` are shared with
tests/test_cli.py, which drives the same task through gin.
"""
import json
import pathlib
import random
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
import sentencepiece as spm
import tensorflow as tf

from jaxprompt.data import custom
from jaxprompt.errors import CheckpointError, ConfigError, DataError, PromptError
from jaxprompt.models.config import get_config
from jaxprompt.train import runtime as components
from jaxprompt.data import pipeline as data_pipeline
from jaxprompt.eval import evaluation as evaluate
from jaxprompt.train import observability
from jaxprompt.train import loop as trainer
from jaxprompt.train.checkpoints import PromptCheckpointer
from jaxprompt.train.optim import make_optimizer
from jaxprompt.train.step import init_train_state
from jaxprompt.commands import configs

LENGTHS = {'inputs': 16, 'targets': 8}
LABELS = ('negative', 'positive')
PY_TASK = 'jp_test_tiny'  # registered from Python here; test_cli registers its own through gin
EMPTY_TASK = 'jp_test_empty_train'
_POS, _NEG, _NEUTRAL = 'good great fine nice superb'.split(), 'bad awful poor dull weak'.split(), \
    'movie film plot story acting'.split()


def _example(rng: random.Random) -> tuple[str, str]:
  positive = rng.random() < 0.5
  words = [rng.choice(_POS if positive else _NEG)] + [rng.choice(_NEUTRAL) for _ in range(3)]
  rng.shuffle(words)
  return ' '.join(words), LABELS[positive]


def make_tiny_task(root: pathlib.Path) -> dict:
  """train.tsv (64 rows), validation.tsv (12), a SentencePiece model (pad 0, eos 1, unk 2) of its text."""
  root.mkdir(parents=True, exist_ok=True)
  rng = random.Random(0)
  files = {}
  for split, count in (('train', 64), ('validation', 12)):
    files[split] = root / f'{split}.tsv'
    files[split].write_text(''.join('\t'.join(_example(rng)) + '\n' for _ in range(count)))
  text = root / 'text.txt'
  text.write_text(''.join(' '.join(_example(rng)) + '\n' for _ in range(300)))
  spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(root / 'tiny'), vocab_size=60,
                                 model_type='unigram', pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2,
                                 hard_vocab_limit=False)
  files['vocab'] = root / 'tiny.model'
  return files


def write_tiny_gin(path: pathlib.Path, files: dict, checkpoint: pathlib.Path, task_name: str,
                   train_steps: int = 6) -> pathlib.Path:
  """A gin file registering the TSV task and sizing the run for the fixture (goes after models/ and runs/)."""
  path.write_text(f"""
VOCABULARY_PATH = '{files['vocab']}'
T5X_TINY_CHECKPOINT = '{checkpoint}'
MIXTURE_OR_TASK_NAME = @jaxprompt.data.file_task_name()
jaxprompt.data.register_file_task:
  name = '{task_name}'
  train = '{files['train']}'
  validation = '{files['validation']}'
  label_set = {list(LABELS)}
TASK_FEATURE_LENGTHS = {LENGTHS}
TRAIN_STEPS = {train_steps}
BATCH_SIZE = 4
PROMPT_LENGTH = 5
EVAL_PERIOD = 3
CHECKPOINT_PERIOD = 3
DROPOUT_RATE = 0.0
jaxprompt.train.log_period = 1
""")
  return path


@pytest.fixture(scope='session')
def tiny_files(tmp_path_factory):
  return make_tiny_task(tmp_path_factory.mktemp('tiny_task'))


@pytest.fixture(scope='module')
def tiny_task(tiny_files):
  return custom.register_file_task(PY_TASK, train=str(tiny_files['train']), validation=str(tiny_files['validation']),
                                   label_set=LABELS, vocabulary=configs.vocabulary(str(tiny_files['vocab']), 0))


@pytest.fixture(scope='module')
def train_kwargs(tiny_task, fixtures_dir):
  return dict(model_config=get_config('t5x_tiny'),
              initial_checkpoint_path=str(fixtures_dir / 't5x_tiny' / 'classic_checkpoint_0'),
              mixture_or_task_name=tiny_task.name, task_feature_lengths=LENGTHS, batch_size=4, prompt_length=5,
              checkpoint_period=3, eval_period=3, log_period=1, progress_bar=False)


def _empty_train_split(split, shuffle_files, seed=None):
  del shuffle_files, seed
  texts = [] if split == 'train' else ['good movie']
  return tf.data.Dataset.from_tensor_slices({'inputs': tf.constant(texts, tf.string),
                                             'targets': tf.constant(['positive'] * len(texts), tf.string)})


@pytest.fixture(scope='module')
def empty_task(tiny_files):
  if EMPTY_TASK not in seqio.TaskRegistry.names():
    vocab = configs.vocabulary(str(tiny_files['vocab']), 0)
    seqio.TaskRegistry.add(
        EMPTY_TASK, source=seqio.FunctionDataSource(_empty_train_split, splits=['train', 'validation']),
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
        output_features={'inputs': seqio.Feature(vocab), 'targets': seqio.Feature(vocab)})
  return EMPTY_TASK


# ------------------------------------------------------------------------------------ training runs


@pytest.mark.slow
def test_resume_is_bitwise_equal_to_an_uninterrupted_run(train_kwargs, tmp_path):
  whole = trainer.train(str(tmp_path / 'whole'), train_steps=6, **train_kwargs)
  # Stopped at step 3 (a checkpoint), then resumed by a fresh call; evaluation off, so this also shows
  # that evaluating (the uninterrupted run evaluates at steps 3 and 6) leaves training untouched.
  part = trainer.train(str(tmp_path / 'resumed'), train_steps=3, **dict(train_kwargs, eval_split=None))
  assert part.step == 3
  resumed = trainer.train(str(tmp_path / 'resumed'), train_steps=6, **dict(train_kwargs, eval_split=None))
  assert (whole.step, resumed.step) == (6, 6)
  assert whole.prompt.dtype == np.float32 and whole.prompt.shape == (5, 32)
  np.testing.assert_array_equal(whole.prompt, resumed.prompt)
  assert not np.array_equal(whole.prompt, part.prompt)  # it did train between 3 and 6

  ckpt = PromptCheckpointer(str(tmp_path / 'resumed'))
  assert ckpt.all_steps() == [3, 6]
  _, meta = ckpt.restore(_template_state(train_kwargs['prompt_length']))
  assert meta['data_position'] == 6
  ckpt.close()
  # The final prompt and each save's numpy copy are float32 [P, d].
  np.testing.assert_array_equal(np.load(tmp_path / 'whole' / trainer.FINAL_PROMPT), whole.prompt)
  np.testing.assert_array_equal(
      np.load(tmp_path / 'whole' / 'numpy_checkpoints' / 'checkpoint_6' / 'prompt.npy'), whole.prompt)

  # Observability: metric histories, eval JSON, TensorBoard scalars, the curves PNG.
  run = tmp_path / 'whole'
  history = [json.loads(line) for line in (run / observability.TRAIN_HISTORY).read_text().splitlines()]
  assert [row['step'] for row in history] == [1, 2, 3, 4, 5, 6]
  assert all(np.isfinite(row['loss_per_token']) and row['learning_rate'] == pytest.approx(0.3) for row in history)
  evals = json.loads((run / observability.EVAL_LATEST).read_text())
  assert evals['step'] == 6 and evals['num_examples'] == 12 and 0 <= evals['accuracy'] <= 100
  assert whole.eval_metrics['loss'] == pytest.approx(evals['loss'])
  assert (run / observability.CURVES).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert {'train/loss', 'train/grad_norm', 'train/prompt_norm', 'train/learning_rate', 'eval/accuracy'} <= _tb_tags(run)


def _template_state(prompt_length):
  """A TrainState of the trainer's structure (default optimizer), as a restore template."""
  prompt = {'prompt': jnp.zeros((prompt_length, 32), jnp.float32)}
  return init_train_state(prompt, make_optimizer(), jax.random.PRNGKey(0))


def _tb_tags(run_dir: pathlib.Path) -> set:
  from tensorflow.core.util import event_pb2  # pylint: disable=g-import-not-at-top
  tags = set()
  for path in run_dir.glob('events.out.tfevents.*'):
    for record in tf.data.TFRecordDataset(str(path)):
      tags |= {v.tag for v in event_pb2.Event.FromString(record.numpy()).summary.value}
  return tags


def test_empty_train_split_names_task_and_split(train_kwargs, empty_task, tmp_path):
  with pytest.raises(DataError, match=rf"{EMPTY_TASK}.*'train'.*empty"):
    trainer.train(str(tmp_path), train_steps=2, **dict(train_kwargs, mixture_or_task_name=empty_task))


def test_unwritable_model_dir_fails_before_anything_runs(train_kwargs, tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a directory')
  with pytest.raises(CheckpointError, match=rf'MODEL_DIR {blocker}/run is not writable'):
    trainer.train(str(blocker / 'run'), train_steps=2, **train_kwargs)


def test_model_config_must_match_the_checkpoint(train_kwargs, tmp_path):
  with pytest.raises(CheckpointError, match=r"parameter '.*' has shape \[.*\] in the checkpoint but the model "
                                            r'expects \[.*\]|do not match the model'):
    trainer.train(str(tmp_path), train_steps=2, **dict(train_kwargs, model_config=get_config('test_tiny')))
  assert not (tmp_path / 'checkpoints').exists() or not any((tmp_path / 'checkpoints').iterdir())


def test_missing_settings_name_their_gin_macro(train_kwargs, tmp_path):
  with pytest.raises(ConfigError, match='MODEL_DIR is not set'):
    trainer.train(None, train_steps=2, **train_kwargs)
  with pytest.raises(ConfigError, match='INITIAL_CHECKPOINT_PATH is not set'):
    trainer.train(str(tmp_path), train_steps=2, **dict(train_kwargs, initial_checkpoint_path=None))
  with pytest.raises(ConfigError, match='TASK_FEATURE_LENGTHS'):
    trainer.train(str(tmp_path), train_steps=2, **dict(train_kwargs, task_feature_lengths={'inputs': 8}))
  with pytest.raises(ConfigError, match='BATCH_SIZE must be a positive integer'):
    trainer.train(str(tmp_path), train_steps=2, **dict(train_kwargs, batch_size=0))


# ------------------------------------------------------------------------------------ pieces


def test_features_match_seqio_encdec_converter(tiny_task):
  examples = data_pipeline.read_examples(tiny_task, LENGTHS, 'validation')
  ours = data_pipeline.to_features([e['inputs'] for e in examples], [e['targets'] for e in examples], LENGTHS)
  ds = tiny_task.get_dataset(LENGTHS, split='validation', shuffle=False, num_epochs=1)
  theirs = list(seqio.EncDecFeatureConverter(pack=False)(ds, LENGTHS).as_numpy_iterator())
  for key in data_pipeline.FEATURES:
    np.testing.assert_array_equal(ours[key], np.stack([t[key] for t in theirs]).astype(ours[key].dtype), key)
  batches = list(data_pipeline.padded_batches(ours, 5))
  assert [real for _, real in batches] == [5, 5, 2]
  assert not batches[-1][0]['encoder_input_tokens'][2:].any()  # padding rows are all zero


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
  prompt = components.load_prompt(prompt_file=str(released), checkpoint=None, step=None, prompt_length=None,
                                  embed_dim=base.emb_dim)
  assert prompt.shape == (100, 768) and prompt.dtype == np.float32
  with pytest.raises(PromptError, match=r'sst2.npy has shape \(100, 768\) but the prompt shape is \(100, 32\)'):
    components.load_prompt(prompt_file=str(released), checkpoint=None, step=None, prompt_length=None, embed_dim=32)
  ints = tmp_path / 'ints.npy'
  np.save(ints, np.zeros((5, 32), np.int32))
  with pytest.raises(PromptError, match=r'ints.npy has dtype int32'):
    components.load_prompt(prompt_file=str(ints), checkpoint=None, step=None, prompt_length=None, embed_dim=32)
  pickled = tmp_path / 'pickled.npy'
  pickled.write_bytes(__import__('pickle').dumps(np.zeros((5, 32), np.float32)))
  with pytest.raises(PromptError, match=r'pickled.npy is not a .npy file'):
    components.load_prompt(prompt_file=str(pickled), checkpoint=None, step=None, prompt_length=None, embed_dim=32)
  with pytest.raises(ConfigError, match='exactly one of --prompt_file'):
    components.load_prompt(prompt_file=str(ints), checkpoint=str(tmp_path), step=None, prompt_length=None,
                           embed_dim=32)


def test_observer_keeps_histories_consistent_after_a_resume(tmp_path):
  obs = observability.TrainObserver(str(tmp_path), total_steps=4, start_step=0, log_period=1, progress_bar=False)
  for step in range(1, 5):
    obs.step(step, {'loss': 8.0 / step, 'weight_sum': 4.0, 'token_accuracy': 0.1 * step, 'grad_norm': 1.0,
                    'prompt_norm': 2.0, 'learning_rate': 0.3})
  obs.eval(4, {'loss': 1.5, 'accuracy': 75.0, 'num_examples': 12})
  obs.close()
  rows = [json.loads(line) for line in (tmp_path / observability.TRAIN_HISTORY).read_text().splitlines()]
  assert [r['step'] for r in rows] == [1, 2, 3, 4]
  assert [r['loss_per_token'] for r in rows] == pytest.approx([2.0, 1.0, 2 / 3, 0.5])
  # Resuming from step 2 drops what was logged after it (it is about to be redone).
  observability.TrainObserver(str(tmp_path), total_steps=4, start_step=2, log_period=1, progress_bar=False).close(
      plot=False)
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
