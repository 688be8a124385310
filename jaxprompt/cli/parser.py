"""The command line's flags: one argparse parser per command, and t5x's `--gin.NAME=VALUE` overrides (pulled out
of argv before argparse sees it, since argparse cannot declare a flag per gin name)."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from jaxprompt.errors import UsageError

PROG = 'jaxprompt'
GIN_PREFIX = '--gin.'

MACROS = """important gin macros (--gin.NAME=VALUE in gin syntax: quote strings, but not numbers, True/False or
@references; every macro, each checked before a command runs: docs/workflow.md):
  MODEL_DIR                 output folder (checkpoints, metrics, TensorBoard, final_prompt.npy): "'/tmp/run'"
  INITIAL_CHECKPOINT_PATH   frozen T5X checkpoint (or HF safetensors folder)   (models/*.gin set it)
  MODEL_CONFIG              @jaxprompt.model_config() with jaxprompt.model_config.name   (models/*.gin)
  MIXTURE_OR_TASK_NAME      seqio task or mixture, e.g. "'taskless_glue_sst2_v200'"
  TASK_FEATURE_LENGTHS      "{'inputs': 512, 'targets': 16}" (unset with --task: from the task's data)
  TRAIN_STEPS               total optimizer steps (30000)
  BATCH_SIZE                global batch size, split over hosts (32)
  METHOD                    tuning method, set by methods/*.gin (@jaxprompt.methods.prompt_tuning)
  PROMPT_LENGTH             prompt tokens (100)
  PROMPT_INIT               initialiser, set by prompts/*.gin (class labels in runs/prompt_tuning.gin)
  LEARNING_RATE             Adafactor learning rate, constant (0.3)
  CLASS_LABELS              labels for class-label init (default: the task's label set)
  RANDOM_SEED               prompt init, data order (0)
  LENGTH_BUCKETS            batches cut to the smallest multiple holding their longest row (64; None: fixed)
  PACK                      several examples per row, each with its own prompt copy (False)
  EVAL_PERIOD, CHECKPOINT_PERIOD, MODEL_PARALLEL, DROPOUT_RATE, PROMPT_FILE, EVAL_SPLIT, INFER_SPLIT
example:
  jaxprompt train --gin_file=models/t5_1_1_lm100k_base.gin --gin_file=runs/prompt_tuning.gin \\
    --gin.MODEL_DIR="'/tmp/sst2'" --gin.MIXTURE_OR_TASK_NAME="'taskless_glue_sst2_v200'"
"""


class _Parser(argparse.ArgumentParser):
  """Usage errors as one `jaxprompt: error: ...` line (argparse would print the whole usage first). Flags are
  exact, as t5x's: an abbreviation (`--prompt_fil`) is refused, so a script or doc that uses one cannot start
  meaning another flag when flags are added or renamed."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **{'allow_abbrev': False, **kwargs})

  def error(self, message: str) -> NoReturn:
    sys.stderr.write(f'{PROG}: error: {message} (see {self.prog} --help)\n')
    sys.exit(2)


def split_gin_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """Pulls t5x-style `--gin.NAME=VALUE` (or `--gin.NAME VALUE`) out of argv -> (rest, ['NAME = VALUE'])."""
  rest, bindings = [], []
  args = list(argv)
  i = 0
  while i < len(args):
    arg = args[i]
    if arg.startswith(GIN_PREFIX):
      name, sep, value = arg[len(GIN_PREFIX):].partition('=')
      if not sep:
        if i + 1 >= len(args):
          raise UsageError(f'{arg} needs a value: {arg}=VALUE')
        i += 1
        value = args[i]
      if not name:
        raise UsageError(f'{arg}: empty gin name (expected --gin.NAME=VALUE)')
      bindings.append(f'{name} = {value}')
    else:
      rest.append(arg)
    i += 1
  return rest, bindings


def _gin_flags(parser: argparse.ArgumentParser) -> None:
  group = parser.add_argument_group('gin')
  group.add_argument('--gin_file', action='append', default=[], metavar='FILE',
                     help='gin file (repeatable; later files override earlier ones)')
  group.add_argument(
      '--gin_search_paths', default='', metavar='DIRS',
      help='comma-separated folders to find gin files in (before the current directory and '
      'the gin_configs/ shipped with jaxprompt)')
  group.add_argument('--gin_bindings', action='append', default=[], metavar='BINDING',
                     help='raw gin binding, e.g. "jaxprompt.Schedule.log_period = 10" (same as --gin.NAME=VALUE)')
  group.add_argument('--tfds_data_dir', default=None, help='read (and prepare) TFDS datasets here')
  group.add_argument(
      '--task', action='append', default=[], metavar='SPEC',
      help='register a task from your TSV/JSONL files (repeatable), e.g. '
      '"name=my_task,train=train.tsv,validation=dev.tsv,labels=no|yes"; then '
      '--gin.MIXTURE_OR_TASK_NAME="\'my_task\'"')
  _cache_flags(parser)


def _cache_flags(parser: argparse.ArgumentParser) -> None:
  group = parser.add_argument_group('compilation cache (see docs/performance.md)')
  group.add_argument(
      '--compilation_cache_dir', default=None, metavar='DIR',
      help='keep compiled XLA programs here for the next run (none: no cache; default: JAX_COMPILATION_CACHE_DIR '
      'if set, else $JAXPROMPT_COMPILATION_CACHE, else $XDG_CACHE_HOME or ~/.cache, /jaxprompt/xla)')
  group.add_argument('--no_compilation_cache', dest='compilation_cache_dir', action='store_const', const='none',
                     help='compile everything afresh and keep nothing (= --compilation_cache_dir=none)')


def _prompt_flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument(
      '--prompt_file', default=None,
      help="a method's inference file (e.g. from export): prompt .npy [P, d], prefix .npz / "
      '.safetensors, per_layer_prompts .npz')
  parser.add_argument('--checkpoint', default=None, help='a training MODEL_DIR or one of its step dirs')
  parser.add_argument('--step', type=int, default=None, help='checkpoint step (default: the latest)')
  parser.add_argument('--split', default=None, help='dataset split (default: the gin setting)')
  parser.add_argument(
      '--prompt', action='append', default=None, metavar='NAME=FILE',
      help='a named prompt (repeatable): any --prompt_file kind or a PEFT adapter folder. eval: '
      'several prompts of the task are scored as an ensemble; infer: a prompt bank over one '
      'model (JSONL input rows name their task), or an ensemble with --ensemble')
  parser.add_argument('--allow_other_model', action='store_true', default=None,
                      help='load prompts recorded for another frozen model (deliberate transfer)')


def build_parser(commands: Sequence[str]) -> argparse.ArgumentParser:
  """The parser of `jaxprompt {train,eval,infer,export}`; `commands` also lists those with their own parser
  (`demo`), shown in the help only: `main` hands their argv over before this parser runs."""
  fmt = argparse.RawDescriptionHelpFormatter
  parser = _Parser(prog=PROG, formatter_class=fmt, epilog=MACROS,
                   description='Prompt tuning of frozen T5X-style T5 models (t5x-style gin CLI).')
  sub = parser.add_subparsers(dest='command', metavar='{' + ','.join(commands) + '}')
  sub.required = True
  p = sub.add_parser('train', help='tune a prompt (resumes from MODEL_DIR)', formatter_class=fmt, epilog=MACROS)
  _gin_flags(p)
  p = sub.add_parser('eval', help='score a split with a prompt; writes metrics JSON', formatter_class=fmt,
                     epilog=MACROS)
  _gin_flags(p)
  _prompt_flags(p)
  p.add_argument('--output', default=None, help='metrics JSON file (also printed to stdout)')
  p.add_argument('--predictions_file', default=None, help='per-example predictions as JSONL')
  p = sub.add_parser('infer', help='predict with a prompt (rank labels or decode); writes JSONL', formatter_class=fmt,
                     epilog=MACROS)
  _gin_flags(p)
  _prompt_flags(p)
  p.add_argument('--input_file', default=None,
                 help="one input per line ('-' = stdin); default: the task split, or stdin without a task")
  p.add_argument('--output', default=None, help='JSONL output file (default: stdout)')
  p.add_argument(
      '--labels', action='append', default=None, metavar='NAME=A|B|...',
      help='rank-classify the rows of task NAME over these labels: a prompt bank\'s task (repeatable; '
      'other tasks decode), or with one prompt its inputs\' task (any NAME for text without a task); '
      'a task with a label set ranks over it without this flag')
  p.add_argument('--ensemble', action='store_true', default=None,
                 help='the --prompt prompts are one task\'s ensemble: every input under each, plus the majority vote')
  p = sub.add_parser(
      'export', help="write a checkpoint's inference file (prompt .npy, prefix .npz / "
      ".safetensors, per_layer_prompts .npz), a PEFT adapter, or the frozen model as a Hugging Face folder",
      formatter_class=fmt)
  _gin_flags(p)
  p.add_argument('--checkpoint', default=None, help='training MODEL_DIR or step dir (default: MODEL_DIR)')
  p.add_argument('--step', type=int, default=None, help='checkpoint step (default: the latest)')
  p.add_argument(
      '--output', required=True, help='file to write (.npy for a prompt; .npz or .safetensors for a '
      'prefix; .npz for per-layer prompts), a folder for a method with a task head and for --format peft / '
      'hf_model, a .safetensors for --format hf_head')
  p.add_argument(
      '--format', default='file', choices=('file', 'peft', 'hf_model', 'hf_head'),
      help="file: the inference file (with a task head: the method's file and head.npz in one folder); hf_head: "
      "the task head as transformers' classifier.* tensors; peft: a Hugging Face PEFT adapter folder "
      '(adapter_config.json + adapter_model.safetensors; an encoder run: SEQ_CLS / TOKEN_CLS with its head) for the '
      'HF model with the same weights; hf_model: that HF T5 itself (config.json, safetensors, tokenizer), written '
      "from the gin files' MODEL_CONFIG, INITIAL_CHECKPOINT_PATH and VOCABULARY, or with --checkpoint of an encoder "
      "run, its frozen encoder and head as one transformers *For* folder (the run's config.gin names the encoder)")
  p.add_argument('--base_model', default=None,
                 help='--format peft: base_model_name_or_path written into adapter_config.json')
  p.add_argument('--overwrite', action='store_true', default=None,
                 help='--format hf_model: replace the Hugging Face model files of a non-empty --output folder')
  p = sub.add_parser('inspect', help="a prompt's nearest vocabulary tokens per position, norms and fingerprint",
                     formatter_class=fmt, epilog=MACROS)
  _gin_flags(p)
  p.add_argument('prompt', help='a prompt .npy, a method file, a PEFT adapter folder or a checkpoint dir')
  p.add_argument('--top_k', type=int, default=None, help='nearest tokens shown per position (default 5)')
  p.add_argument('--output', default=None, help='also write the report as JSON here')
  if 'demo' in commands:
    sub.add_parser('demo', help='the bundled demo (own flags: jaxprompt demo --help)', add_help=False)
  return parser
