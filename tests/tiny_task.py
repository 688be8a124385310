"""A tiny TSV task for training tests on the t5x fixture model (vocab 128).

The fixture model has no real vocabulary (t5x used a 128-id PassThroughVocabulary), so the tests train a
SentencePiece model of ~40 pieces on the task's own text (< 1 s) and use it without extra ids: every token id
then indexes the fixture's 128-row embedding table. The fixtures built from it are in conftest.py.
"""
import pathlib
import random

import sentencepiece as spm
import tensorflow as tf

LENGTHS = {'inputs': 16, 'targets': 8}
PROMPT_LENGTH = 5
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
  spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(root / 'tiny'), vocab_size=60, model_type='unigram',
                                 pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2, hard_vocab_limit=False)
  files['vocab'] = root / 'tiny.model'
  return files


GIN_TASK = 'jp_test_tiny_gin'  # the task `tiny_gin` registers through gin


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
jaxprompt.Schedule.log_period = 1
""")
  return path


def empty_train_split(split, shuffle_files, seed=None):
  del shuffle_files, seed
  texts = [] if split == 'train' else ['good movie']
  return tf.data.Dataset.from_tensor_slices({
      'inputs': tf.constant(texts, tf.string), 'targets': tf.constant(['positive'] * len(texts), tf.string)
  })
