"""`jaxprompt {train,eval,infer,export}` (and `demo`, handed to `jaxprompt.demo.run`): the t5x-style command line.

Configuration is gin, as in t5x / prompt-tuning: `--gin_file` (repeatable, later files win),
`--gin_search_paths` (comma list of folders the gin files and their `include`s are looked up in) and
`--gin.NAME=VALUE` overrides (repeatable; VALUE is gin syntax, so strings are quoted:
`--gin.MODEL_DIR="'/tmp/run'"`). gin files are searched in `--gin_search_paths`, then the current directory,
then jaxprompt's own `gin_configs/` (the repository folder; `jaxprompt/gin_configs` links to it in a checkout and
is a copy inside a wheel).

Every bad input ends the process with one line on stderr, `jaxprompt: error: <message>`, and exit code 2
(1 when training stops on a non-finite loss); no traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import logging
import os
import pathlib
import sys
import tempfile
from typing import Iterator, Sequence

PROG = 'jaxprompt'
PACKAGE_GIN_CONFIGS = pathlib.Path(__file__).resolve().parent.parent / 'gin_configs'

MACROS = """important gin macros (set with --gin.NAME=VALUE, gin syntax: quote strings):
  MODEL_DIR                 output folder (checkpoints, metrics, TensorBoard, final_prompt.npy): "'/tmp/run'"
  INITIAL_CHECKPOINT_PATH   frozen T5X checkpoint (or HF safetensors folder)   (models/*.gin set it)
  MODEL_CONFIG              @jaxprompt.model_config() with jaxprompt.model_config.name   (models/*.gin)
  MIXTURE_OR_TASK_NAME      seqio task or mixture, e.g. "'taskless_glue_sst2_v200'"
  TASK_FEATURE_LENGTHS      "{'inputs': 512, 'targets': 16}"
  TRAIN_STEPS               total optimizer steps (30000)
  BATCH_SIZE                global batch size, split over hosts (32)
  PROMPT_LENGTH             prompt tokens (100)
  PROMPT_INIT               initialiser, set by prompts/*.gin (class labels in runs/prompt_tuning.gin)
  LEARNING_RATE             Adafactor learning rate, constant (0.3)
  CLASS_LABELS              labels for class-label init (default: the task's label set)
  RANDOM_SEED               prompt init, data order (0)
  EVAL_PERIOD, CHECKPOINT_PERIOD, MODEL_PARALLEL, DROPOUT_RATE, PROMPT_FILE, EVAL_SPLIT, INFER_SPLIT
example:
  jaxprompt train --gin_file=models/t5_1_1_lm100k_base.gin --gin_file=runs/prompt_tuning.gin \\
    --gin.MODEL_DIR="'/tmp/sst2'" --gin.MIXTURE_OR_TASK_NAME="'taskless_glue_sst2_v200'"
"""


class CliError(Exception):
  """A command-line mistake (exit 2)."""


class _Parser(argparse.ArgumentParser):
  """Usage errors as one `jaxprompt: error: ...` line (argparse would print the whole usage first)."""

  def error(self, message: str):
    sys.stderr.write(f'{PROG}: error: {message} (see {self.prog} --help)\n')
    sys.exit(2)


# ------------------------------------------------------------------------------------ arguments


def split_gin_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """Pulls t5x-style `--gin.NAME=VALUE` (or `--gin.NAME VALUE`) out of argv -> (rest, ['NAME = VALUE'])."""
  rest, bindings = [], []
  args = list(argv)
  i = 0
  while i < len(args):
    arg = args[i]
    if arg.startswith('--gin.'):
      name, sep, value = arg[len('--gin.'):].partition('=')
      if not sep:
        if i + 1 >= len(args):
          raise CliError(f'{arg} needs a value: {arg}=VALUE')
        i += 1
        value = args[i]
      if not name:
        raise CliError(f'{arg}: empty gin name (expected --gin.NAME=VALUE)')
      bindings.append(f'{name} = {value}')
    else:
      rest.append(arg)
    i += 1
  return rest, bindings


def _add_gin_flags(parser: argparse.ArgumentParser) -> None:
  group = parser.add_argument_group('gin')
  group.add_argument('--gin_file', action='append', default=[], metavar='FILE',
                     help='gin file (repeatable; later files override earlier ones)')
  group.add_argument('--gin_search_paths', default='', metavar='DIRS',
                     help='comma-separated folders to find gin files in (before the current directory and '
                          'the gin_configs/ shipped with jaxprompt)')
  group.add_argument('--gin_bindings', action='append', default=[], metavar='BINDING',
                     help="raw gin binding, e.g. \"train.batch_size = 8\" (same as --gin.NAME=VALUE)")
  group.add_argument('--tfds_data_dir', default=None, help='read (and prepare) TFDS datasets here')
  group.add_argument('--task', action='append', default=[], metavar='SPEC',
                     help='register a task from your TSV/JSONL files (repeatable), e.g. '
                          '"name=my_task,train=train.tsv,validation=dev.tsv,labels=no|yes"; then '
                          "--gin.MIXTURE_OR_TASK_NAME=\"'my_task'\"")


def _prompt_flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--prompt_file', default=None, help='prompt as a float [P, d] .npy (e.g. from export)')
  parser.add_argument('--checkpoint', default=None, help='a training MODEL_DIR or one of its step dirs')
  parser.add_argument('--step', type=int, default=None, help='checkpoint step (default: the latest)')
  parser.add_argument('--split', default=None, help='dataset split (default: the gin setting)')


def build_parser() -> argparse.ArgumentParser:
  fmt = argparse.RawDescriptionHelpFormatter
  parser = _Parser(prog=PROG, formatter_class=fmt, epilog=MACROS,
                                   description='Prompt tuning of frozen T5X-style T5 models (t5x-style gin CLI).')
  sub = parser.add_subparsers(dest='command', metavar='{train,eval,infer,export,demo}')
  sub.required = True
  p = sub.add_parser('train', help='tune a prompt (resumes from MODEL_DIR)', formatter_class=fmt, epilog=MACROS)
  _add_gin_flags(p)
  p = sub.add_parser('eval', help='score a split with a prompt; writes metrics JSON', formatter_class=fmt,
                     epilog=MACROS)
  _add_gin_flags(p)
  _prompt_flags(p)
  p.add_argument('--output', default=None, help='metrics JSON file (also printed to stdout)')
  p.add_argument('--predictions_file', default=None, help='per-example predictions as JSONL')
  p = sub.add_parser('infer', help='decode inputs with a prompt; writes JSONL', formatter_class=fmt,
                     epilog=MACROS)
  _add_gin_flags(p)
  _prompt_flags(p)
  p.add_argument('--input_file', default=None,
                 help="one input per line ('-' = stdin); default: the task split, or stdin without a task")
  p.add_argument('--output', default=None, help='JSONL output file (default: stdout)')
  p = sub.add_parser('export', help='write a checkpoint prompt as a float32 [P, d] .npy', formatter_class=fmt)
  _add_gin_flags(p)
  p.add_argument('--checkpoint', default=None, help='training MODEL_DIR or step dir (default: MODEL_DIR)')
  p.add_argument('--step', type=int, default=None, help='checkpoint step (default: the latest)')
  p.add_argument('--output', required=True, help='.npy file to write')
  if importlib.util.find_spec('jaxprompt.demo.run') is not None:
    sub.add_parser('demo', help='the bundled demo (own flags: jaxprompt demo --help)', add_help=False)
  return parser


# ------------------------------------------------------------------------------------ gin


def search_paths(flag: str) -> list[str]:
  """--gin_search_paths entries, then the current directory, then jaxprompt's gin_configs/."""
  paths = [p.strip() for p in flag.split(',') if p.strip()]
  paths.append(os.getcwd())
  if PACKAGE_GIN_CONFIGS.is_dir():
    paths.append(str(PACKAGE_GIN_CONFIGS))
  return paths


def resolve_gin_file(name: str, paths: Sequence[str]) -> str:
  if os.path.isabs(name):
    if os.path.isfile(name):
      return name
    raise CliError(f'gin file {name} does not exist')
  for base in paths:
    candidate = os.path.join(base, name)
    if os.path.isfile(candidate):
      return candidate
  raise CliError(f'gin file {name!r} not found in the search paths {list(paths)}')


def _one_line(text: str) -> str:
  """Gin appends context lines ('In call to configurable ...', file and line): keep the useful ones."""
  lines = [line.strip() for line in str(text).splitlines() if line.strip()]
  lines = [line for line in lines if not line.startswith('In call to configurable')]
  return '; '.join(lines) or type(text).__name__


@contextlib.contextmanager
def _quiet_gin_logging() -> Iterator[None]:
  """gin logs 'Path not found' on the root logger before raising; the raised error is what we report."""
  root = logging.getLogger()
  old = root.level
  root.setLevel(logging.CRITICAL)
  try:
    yield
  finally:
    root.setLevel(old)


def parse_gin(args: argparse.Namespace, overrides: Sequence[str], files: Sequence[str]) -> None:
  """Parses the (resolved) gin files, then --gin_bindings and --gin.NAME=VALUE overrides, in that order."""
  import gin  # pylint: disable=g-import-not-at-top
  paths = search_paths(args.gin_search_paths)
  bindings = list(args.gin_bindings) + list(overrides)
  gin.clear_config()
  for path in paths:
    gin.add_config_file_search_path(path)
  try:
    with _quiet_gin_logging():
      gin.parse_config_files_and_bindings(files, bindings, finalize_config=False)
  except (ValueError, KeyError, TypeError, SyntaxError, IOError, ImportError, AttributeError) as e:
    raise CliError(f'gin: {_one_line(str(e) or type(e).__name__)}') from e
  except Exception as e:  # pylint: disable=broad-except  (gin's parser raises tokenize errors too)
    if type(e).__module__.startswith(('gin', 'tokenize')):
      raise CliError(f'gin: {_one_line(str(e))}') from e
    raise


def gin_macro(name: str) -> object | None:
  import gin  # pylint: disable=g-import-not-at-top
  try:
    return gin.query_parameter(f'%{name}')
  except ValueError:
    return None


# ------------------------------------------------------------------------------------ commands


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
  """TensorFlow / XLA print C++ log lines at import whatever TF_CPP_MIN_LOG_LEVEL says; hide them (replayed
  if the import fails)."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as sink:
    os.dup2(sink.fileno(), 2)
    try:
      yield
    except BaseException:
      os.dup2(saved, 2)
      sink.seek(0)
      sys.stderr.write(sink.read().decode('utf-8', 'replace'))
      raise
    finally:
      os.dup2(saved, 2)
      os.close(saved)


# Modules defining gin configurables: imported before any gin file is parsed.
CONFIGURABLE_MODULES = ('seqio', 'tensorflow', 'jaxprompt.data.custom', 'jaxprompt.data.tasks', 'jaxprompt.methods',
                        'jaxprompt.train.optim', 'jaxprompt.commands.configs', 'jaxprompt.train.loop',
                        'jaxprompt.eval.evaluation', 'jaxprompt.commands.evaluate', 'jaxprompt.commands.infer')


def import_configurables() -> None:
  """Imports every module with gin configurables (before parsing gin files), hiding native start-up logs."""
  with _quiet_native_stderr():
    for module in CONFIGURABLE_MODULES:
      importlib.import_module(module)
    import jax  # pylint: disable=g-import-not-at-top
    from jaxprompt.parallel import multihost  # pylint: disable=g-import-not-at-top
    multihost.maybe_initialize_distributed()  # on a pod: before anything touches a device
    jax.devices()  # the backend's start-up logs, too


def _kwargs(**values) -> dict:
  """Only the flags the user gave: the rest stays with gin's bindings."""
  return {k: v for k, v in values.items() if v is not None}


def run_train(args: argparse.Namespace) -> int:
  from jaxprompt.train import loop as trainer  # pylint: disable=g-import-not-at-top
  result = trainer.train()  # pylint: disable=no-value-for-parameter  (gin supplies the arguments)
  summary = {'model_dir': result.model_dir, 'step': result.step, 'preempted': result.preempted,
             'prompt_file': result.prompt_file, 'eval_metrics': result.eval_metrics}
  print(json.dumps(summary, sort_keys=True), flush=True)
  return 0


def run_eval(args: argparse.Namespace) -> int:
  from jaxprompt.commands import evaluate  # pylint: disable=g-import-not-at-top
  result = evaluate.evaluate(**_kwargs(output_file=args.output, prompt_file=args.prompt_file,
                                       checkpoint=args.checkpoint, checkpoint_step=args.step, split=args.split,
                                       predictions_file=args.predictions_file))
  print(json.dumps(result, sort_keys=True), flush=True)
  return 0


def run_infer(args: argparse.Namespace) -> int:
  from jaxprompt.commands import infer  # pylint: disable=g-import-not-at-top
  infer.infer(**_kwargs(output_file=args.output, prompt_file=args.prompt_file, checkpoint=args.checkpoint,
                        checkpoint_step=args.step, split=args.split, input_file=args.input_file))
  return 0


def run_export(args: argparse.Namespace) -> int:
  from jaxprompt.train import checkpoints as checkpointing  # pylint: disable=g-import-not-at-top
  source = args.checkpoint or gin_macro('MODEL_DIR')
  if not source:
    raise CliError('export needs --checkpoint (a training MODEL_DIR or step dir) or --gin.MODEL_DIR')
  prompt = checkpointing.load_prompt_from_checkpoint(str(source), step=args.step)
  path = checkpointing.export_prompt(prompt, args.output)
  print(json.dumps({'checkpoint': str(source), 'output': path, 'shape': list(prompt.shape)}), flush=True)
  return 0


COMMANDS = {'train': run_train, 'eval': run_eval, 'infer': run_infer, 'export': run_export}


class _StderrHandler(logging.Handler):
  """Writes to whatever `sys.stderr` is now (not the stream of the first call, e.g. under pytest)."""

  def emit(self, record: logging.LogRecord) -> None:
    try:
      sys.stderr.write(self.format(record) + '\n')
    except Exception:  # pylint: disable=broad-except
      self.handleError(record)


class _DropKnownNoise(logging.Filter):
  """seqio warns that a FunctionDataSource task is uncached on every run; jaxprompt's file tasks reshuffle
  the whole split each epoch, so the advice does not apply."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith('Using an uncached FunctionDataset for training')


@contextlib.contextmanager
def _console_logging() -> Iterator[None]:
  """jaxprompt's INFO lines on stderr for the duration of a command (undone after, for in-process callers)."""
  logger = logging.getLogger('jaxprompt')
  handler = _StderrHandler()
  handler.setFormatter(logging.Formatter('%(asctime)s %(message)s', datefmt='%H:%M:%S'))
  saved = logger.level, logger.propagate
  logger.addHandler(handler)
  logger.setLevel(logging.INFO)
  logger.propagate = False
  noise = _DropKnownNoise()
  absl_logger = logging.getLogger('absl')
  absl_logger.addFilter(noise)
  try:
    yield
  finally:
    logger.removeHandler(handler)
    logger.level, logger.propagate = saved
    absl_logger.removeFilter(noise)


def _fail(message: str, code: int) -> int:
  sys.stderr.write(f'{PROG}: error: {" ".join(str(message).split())}\n')
  sys.stderr.flush()
  return code


def _gin_call_error(e: Exception) -> str | None:
  """A message for errors gin raises when calling configurables (unset macro, missing required binding)."""
  text = str(e)
  if 'No values supplied by Gin or caller' in text or 'Required bindings' in text or 'REQUIRED' in text:
    scope = text.rsplit("in scope '", 1)
    if 'macro()' in text and len(scope) == 2:
      name = scope[1].split("'", 1)[0]
      return f'gin macro {name} is used but never set: pass --gin.{name}=VALUE or set it in a gin file'
    return f'gin: {_one_line(text)}'
  return None


def main(argv: Sequence[str] | None = None) -> int:
  """Runs one command; returns the exit code (the console script exits with it)."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv[:1] == ['demo'] and importlib.util.find_spec('jaxprompt.demo.run') is not None:
    from jaxprompt.demo import run as demo_run  # pylint: disable=g-import-not-at-top  (its own flags)
    return demo_run.main(argv[1:])
  parser = build_parser()
  try:
    rest, overrides = split_gin_overrides(argv)
  except CliError as e:
    return _fail(str(e), 2)
  args = parser.parse_args(rest)  # usage errors: one line, exit 2
  with _console_logging():
    return _run(args, overrides)


def _run(args: argparse.Namespace, overrides: Sequence[str]) -> int:
  from jaxprompt.errors import JaxPromptError, TrainingError  # pylint: disable=g-import-not-at-top
  try:
    files = [resolve_gin_file(f, search_paths(args.gin_search_paths)) for f in args.gin_file]  # before slow imports
    if args.command != 'export' or files or args.gin_bindings or overrides:  # export needs neither TF nor gin
      import_configurables()
      parse_gin(args, overrides, files)
    if args.task:
      from jaxprompt.data import custom  # pylint: disable=g-import-not-at-top
      for spec in args.task:  # after gin, so the model's vocabulary binding applies
        custom.register_task_spec(spec)
    if args.tfds_data_dir:
      from jaxprompt.data import tasks  # pylint: disable=g-import-not-at-top
      tasks.set_tfds_data_dir(args.tfds_data_dir)
    return COMMANDS[args.command](args)
  except CliError as e:
    return _fail(str(e), 2)
  except TrainingError as e:
    return _fail(_one_line(str(e)), 1)
  except JaxPromptError as e:
    return _fail(_one_line(str(e)), 2)
  except KeyboardInterrupt:
    return _fail('interrupted', 130)
  except OSError as e:  # a file the user named cannot be read or written
    where = f'{e.filename}: ' if getattr(e, 'filename', None) else ''
    return _fail(f'{where}{e.strerror or e}', 2)
  except (TypeError, ValueError, RuntimeError) as e:
    message = _gin_call_error(e)
    if message is None:
      raise
    return _fail(message, 2)


def entry_point() -> None:
  sys.exit(main())


if __name__ == '__main__':
  entry_point()
