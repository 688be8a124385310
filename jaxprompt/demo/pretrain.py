"""Pretrains the demo model from scratch: `python -m jaxprompt.demo.pretrain --output DIR --seed 0`.

Steps, all deterministic given the seed:
  1. generate the skills' text (`demo.data`) and train a SentencePiece vocabulary on it -> DIR/vocab.model
  2. register the demo seqio tasks with that vocabulary
  3. train every parameter of `DEMO_CONFIG` on the `demo_pretrain` mixture with `jaxprompt.train_model`,
     configured by gin_configs/runs/demo_pretrain.gin (+ any --gin.NAME=VALUE overrides)
  4. write DIR/checkpoint_<steps>/checkpoint (T5X, arrays inline) and DIR/config.json (architecture, recipe and
     the per-skill validation accuracies)
Training logs (metrics, TensorBoard, curves PNG) go to --log_dir, not into DIR.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence

from jaxprompt.cli import console
from jaxprompt.cli import parser as cli_parser
from jaxprompt.demo import GIN_MODULES, data
from jaxprompt.demo import model as demo_model
from jaxprompt.errors import ConfigError

PRETRAIN_GIN = ('runs/demo_pretrain.gin',)
_SP_OPTIONS = dict(model_type='bpe', pad_id=0, eos_id=1, unk_id=2, bos_id=-1, byte_fallback=True,
                   character_coverage=1.0, num_threads=1, split_digits=True, shuffle_input_sentence=False,
                   hard_vocab_limit=False, minloglevel=2)


def train_vocabulary(seed: int, path: str, vocab_size: int = demo_model.VOCAB_SIZE) -> str:
  """SentencePiece BPE over the generated skills' text (byte fallback: any text still encodes)."""
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(data.corpus(seed)), model_writer=buffer, vocab_size=vocab_size,
                                 **_SP_OPTIONS)
  with open(path, 'wb') as f:
    f.write(buffer.getvalue())
  return path


def write_checkpoint(params, output: str, step: int) -> str:
  """`output/checkpoint_<step>/checkpoint`: a T5X classic checkpoint whose arrays are all inline in the msgpack
  (T5X's layout for arrays it does not partition). No zarr folders: their `.zarray` dot-files would be left out
  of the wheel by setuptools, breaking the installed model."""
  from jaxprompt.checkpoints import t5x_writer  # pylint: disable=g-import-not-at-top
  path = os.path.join(output, f'checkpoint_{int(step)}', 'checkpoint')
  return t5x_writer.save_t5x_checkpoint(params, path, step, layout='msgpack', overwrite=True)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='python -m jaxprompt.demo.pretrain', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--output', required=True, help='model dir to write (checkpoint, vocabulary, config.json)')
  parser.add_argument('--seed', type=int, default=0, help='seeds the vocabulary data, the init and data order')
  parser.add_argument('--steps', type=int, default=None, help='override TRAIN_STEPS of demo_pretrain.gin')
  parser.add_argument('--log_dir', default=None, help='training logs (default: a new temporary directory)')
  parser.add_argument('--eval_examples', type=int, default=200, help='validation examples per skill at the end')
  parser.add_argument('--overwrite', action='store_true', help='replace an existing model in --output')
  return parser


def pretrain(output: str, *, seed: int = 0, steps: int | None = None, log_dir: str | None = None,
             eval_examples: int = 200, overwrite: bool = False, bindings: Sequence[str] = ()) -> dict:
  """Runs the whole recipe into `output`; returns the written config.json content."""
  from jaxprompt.cli import gin_config  # pylint: disable=g-import-not-at-top  (imports TF)
  gin_config.import_configurables(GIN_MODULES)
  console.quiet_known_noise()
  from jaxprompt.commands import train as trainer  # pylint: disable=g-import-not-at-top
  from jaxprompt.demo import tasks  # pylint: disable=g-import-not-at-top
  if os.path.exists(os.path.join(output, demo_model.CONFIG_FILE)) and not overwrite:
    raise ConfigError(f'{output} already holds a demo model (pass --overwrite to replace it)')
  os.makedirs(output, exist_ok=True)
  for name in os.listdir(output):
    if name.startswith('checkpoint_'):
      shutil.rmtree(os.path.join(output, name))
  start = time.time()
  vocab_path = train_vocabulary(seed, os.path.join(output, demo_model.VOCAB_FILE))
  vocabulary = demo_model.vocabulary(output)
  tasks.register_demo_tasks(vocabulary)
  log_dir = log_dir or tempfile.mkdtemp(prefix='demo_pretrain_')
  overrides = [f'MODEL_DIR = {gin_config.quote(log_dir)}', f'RANDOM_SEED = {int(seed)}']
  if steps is not None:  # a short run (tests) also gets a proportionally short warmup
    overrides += [f'TRAIN_STEPS = {int(steps)}', f'WARMUP_STEPS = {min(100, int(steps) // 10)}']
  gin_config.parse(PRETRAIN_GIN, overrides + list(bindings))
  import gin  # pylint: disable=g-import-not-at-top
  config = demo_model.architecture()  # bound once, so config.json records exactly what was trained
  gin.bind_parameter('jaxprompt.ModelSource.config', config)
  gin.bind_parameter('jaxprompt.EvalConfig.max_examples', eval_examples)
  result = trainer.train_model()  # pylint: disable=no-value-for-parameter  (gin supplies the arguments)
  checkpoint = write_checkpoint(result.trainable, output, result.step)
  info = {
      'model_config': demo_model.config_to_json(config),
      'vocabulary': {
          'file': demo_model.VOCAB_FILE, 'type': 'sentencepiece', 'options': _SP_OPTIONS,
          'vocab_size': vocabulary.vocab_size, 'extra_ids': 0, 'pad_id': 0, 'eos_id': 1, 'unk_id': 2
      },
      'checkpoint': os.path.basename(os.path.dirname(checkpoint)),
      'pretraining': {
          'command': f'python -m jaxprompt.demo.pretrain --output DIR --seed {seed}' +
                     (f' --steps {steps}' if steps is not None else ''), 'seed': seed, 'steps': result.step,
          'gin_files': list(PRETRAIN_GIN), 'gin_overrides': list(bindings), 'mixture': tasks.PRETRAIN_MIXTURE,
          'skill_rates': data.SKILL_RATES, 'data_seed': tasks.DATA_SEED, 'heldout_seed': tasks.HELDOUT_SEED,
          'seconds': round(time.time() - start, 1)
      },
      'validation': {
          k: v
          for k, v in sorted((result.eval_metrics or {}).items())
          if k.endswith(('/accuracy', '/sequence_accuracy', '/token_accuracy'))
      },
  }
  with open(os.path.join(output, demo_model.CONFIG_FILE), 'w') as f:
    f.write(json.dumps(info, indent=1, sort_keys=True) + '\n')
  print(
      f'demo model written to {output} ({checkpoint}, {vocab_path}) in {info["pretraining"]["seconds"]} s; '
      f'logs in {log_dir}', flush=True)
  for key, value in info['validation'].items():
    print(f'  {key}: {value:.3g}', flush=True)
  return info


def main(argv: Sequence[str] | None = None) -> int:
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  argv = list(sys.argv[1:] if argv is None else argv)

  def pretrain_command() -> int:
    rest, bindings = cli_parser.split_gin_overrides(argv)
    args = build_parser().parse_args(rest)
    pretrain(args.output, seed=args.seed, steps=args.steps, log_dir=args.log_dir, eval_examples=args.eval_examples,
             overwrite=args.overwrite, bindings=bindings)
    return 0

  return console.run_reporting_errors(pretrain_command, prog='pretrain')


if __name__ == '__main__':
  sys.exit(main())
