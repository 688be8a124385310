"""Pretrains a demo model from scratch: `python -m jaxprompt.demo.pretrain --output DIR --seed 0 [--family F]`.

One recipe, three model families (`--family`, `demo.families`): the T5 demo model (t5, `demo.model`), the causal
one (causal, a tiny Llama: `demo.causal_model`) and the encoder one (encoder, a tiny BERT: `demo.encoder_model`).
Steps, all deterministic given the seed:
  1. generate text (`demo.data`) and train a vocabulary on it: SentencePiece -> DIR/vocab.model (t5) or
     DIR/tokenizer.model + tokenizer_config.json (causal; the same vocabulary for both); a WordPiece
     tokenizer.json + tokenizer_config.json (encoder)
  2. register the demo seqio tasks with that vocabulary
  3. train every parameter of the family's architecture, configured by its gin file + any --gin.NAME=VALUE
     overrides: t5 and causal on the `demo_pretrain` mixture with `jaxprompt.train_model`
     (gin_configs/runs/demo_pretrain.gin, demo_causal_pretrain.gin: inputs + targets streams, loss on the targets,
     packed); encoder with masked LM on review texts (`demo.mlm_pretrain`, runs/demo_encoder_pretrain.gin)
  4. t5: write DIR/checkpoint_<steps>/checkpoint (T5X, arrays inline) and DIR/config.json (architecture, recipe
     and the per-skill validation accuracies); causal / encoder: a Hugging Face Llama / BertForMaskedLM folder
     (config.json, model.safetensors) and DIR/pretraining.json (recipe and accuracies)
Training logs (metrics, TensorBoard, curves PNG) go to --log_dir, not into DIR.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence

from jaxprompt.cli import console
from jaxprompt.cli import parser as cli_parser
from jaxprompt.demo import GIN_MODULES, families
from jaxprompt.demo import model as demo_model
from jaxprompt.errors import ConfigError

EVAL_EXAMPLES = 200  # validation examples per skill (the encoder: held-out texts) measured at the end


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='python -m jaxprompt.demo.pretrain', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--output', required=True, help='model dir to write (checkpoint, vocabulary, config.json)')
  parser.add_argument(
      '--family', default='t5', choices=tuple(families.FAMILIES),
      help='t5: the T5 demo model; causal: the tiny Llama, encoder: the tiny BERT (Hugging Face folders)')
  parser.add_argument('--seed', type=int, default=0, help='seeds the vocabulary data, the init and data order')
  parser.add_argument('--steps', type=int, default=None, help='override TRAIN_STEPS of the family\'s gin file')
  parser.add_argument('--log_dir', default=None, help='training logs (default: a new temporary directory)')
  parser.add_argument('--eval_examples', type=int, default=EVAL_EXAMPLES,
                      help='validation examples per skill (encoder: held-out texts) at the end')
  parser.add_argument('--overwrite', action='store_true', help='replace an existing model in --output')
  return parser


def pretrain(output: str, *, family: str = 't5', seed: int = 0, steps: int | None = None, log_dir: str | None = None,
             eval_examples: int = EVAL_EXAMPLES, overwrite: bool = False, bindings: Sequence[str] = ()) -> dict:
  """Runs the whole recipe into `output`; returns the recorded recipe and accuracies."""
  recipe = families.get(family)
  from jaxprompt.cli import gin_config  # pylint: disable=g-import-not-at-top  (imports TF)
  gin_config.import_configurables(GIN_MODULES)
  console.quiet_known_noise()
  from jaxprompt.demo import tasks  # pylint: disable=g-import-not-at-top
  if os.path.exists(os.path.join(output, demo_model.CONFIG_FILE)) and not overwrite:
    raise ConfigError(f'{output} already holds a demo model (pass --overwrite to replace it)')
  os.makedirs(output, exist_ok=True)
  for name in os.listdir(output):
    if name.startswith('checkpoint_'):
      shutil.rmtree(os.path.join(output, name))
  start = time.time()
  vocab_path = os.path.join(output, recipe.vocab_file)
  vocab_info = recipe.train_vocabulary(seed, vocab_path)
  vocabulary = recipe.vocabulary(output)
  tasks.register_demo_tasks(vocabulary)
  log_dir = log_dir or tempfile.mkdtemp(prefix='demo_pretrain_')
  overrides = [f'MODEL_DIR = {gin_config.quote(log_dir)}', f'RANDOM_SEED = {int(seed)}']
  if steps is not None:  # a short run (tests) also gets a proportionally short warmup
    overrides += [f'TRAIN_STEPS = {int(steps)}', f'WARMUP_STEPS = {min(100, int(steps) // 10)}']
  gin_config.parse(recipe.pretrain_gin, overrides + list(bindings))
  config = recipe.architecture()  # bound once, so what is written records exactly what was trained
  done, trained, metrics, text = recipe.train(config, vocabulary, eval_examples)
  command = f'python -m jaxprompt.demo.pretrain --output DIR --seed {seed}' + (f' --family {family}'
                                                                               if family != 't5' else '')
  info = {
      'vocabulary': {'file': recipe.vocab_file, **vocab_info, 'vocab_size': vocabulary.vocab_size},
      'pretraining': {
          'command': command + (f' --steps {steps}' if steps is not None else '') +
                     (f' --eval_examples {eval_examples}' if eval_examples != EVAL_EXAMPLES else ''), 'seed': seed,
          'steps': done, 'gin_files': list(recipe.pretrain_gin), 'gin_overrides': list(bindings),
          **text, 'seconds': round(time.time() - start, 1)
      },
      'validation': {
          k: v for k, v in sorted(metrics.items()) if k.endswith(('/accuracy', '/sequence_accuracy', '/token_accuracy'))
      },
  }
  info = recipe.write(trained, config, output, done, info)
  print(
      f'{family} demo model written to {output} (vocabulary {vocab_path}) in {info["pretraining"]["seconds"]} s; '
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
    pretrain(args.output, family=args.family, seed=args.seed, steps=args.steps, log_dir=args.log_dir,
             eval_examples=args.eval_examples, overwrite=args.overwrite, bindings=bindings)
    return 0

  return console.run_reporting_errors(pretrain_command, prog='pretrain')


if __name__ == '__main__':
  sys.exit(main())
