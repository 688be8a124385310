"""`jaxprompt {train,eval,infer,export,inspect,demo}`: the t5x-style command line.

Configuration is gin, as in t5x / prompt-tuning: `--gin_file` (repeatable, later files win), `--gin_search_paths`
and `--gin.NAME=VALUE` overrides (see `gin_config`). Each command is a `module:function` string, imported only
when it runs: `jaxprompt --help` stays fast and nothing here imports what it dispatches to (the demo depends on
the CLI, never the reverse).

Every bad input ends the process with one line on stderr, `jaxprompt: error: <message>`, and exit code 2
(1 when training stops on a non-finite loss); no traceback.

A call's fixed cost is kept small: compiled programs persist across runs (`compilation_cache`:
`--compilation_cache_dir`, `--no_compilation_cache`, `JAXPROMPT_COMPILATION_CACHE`), and every command but train
starts without TensorFlow and seqio (`gin_config.LIGHT_MODULES`), which load only when the run reads a task that
is not a text task (`jaxprompt.data.text_tasks`: the demo's and `--task` files are read without them).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from jaxprompt.cli import compilation_cache, console, gin_config, parser, run_dir, task_lengths
from jaxprompt.errors import UsageError
from jaxprompt.formats import macros

# The entry point of each command. train / eval / infer are gin configurables (`jaxprompt.train`, ...); demo
# parses its own flags (`jaxprompt demo --help`) and gets the rest of argv.
COMMANDS = {
    'train': 'jaxprompt.commands.train:train',
    'eval': 'jaxprompt.commands.evaluate:evaluate',
    'infer': 'jaxprompt.commands.infer:infer',
    'export': 'jaxprompt.commands.export:export',
    'inspect': 'jaxprompt.commands.inspect:inspect',
    'demo': 'jaxprompt.demo.run:main',
}
OWN_PARSERS = ('demo',)  # handed the rest of argv before argparse runs
TASK_SPECS = 'jaxprompt.data.task_spec'  # registers --task specs, and those a run's config.gin recorded
LENGTH_COMMANDS = ('train', 'eval', 'infer')  # they read TASK_FEATURE_LENGTHS (--task: from the data, see task_lengths)
# Commands that start with `gin_config.LIGHT_MODULES` only: TensorFlow and seqio load when the run reads a seqio
# task (a text task, infer on text and inspect never do), the training loop's modules not at all.
LIGHT_START = ('eval', 'infer', 'export', 'inspect')


def _module(command: str) -> str:
  return COMMANDS[command].partition(':')[0]


def available() -> list[str]:
  """The commands whose module is installed (a slim install may leave the demo out)."""
  return [c for c in COMMANDS if importlib.util.find_spec(_module(c)) is not None]


def load(command: str) -> Callable[..., Any]:
  """Imports the entry point of `command`."""
  module, _, function = COMMANDS[command].partition(':')
  return getattr(importlib.import_module(module), function)


def _kwargs(**values: Any) -> dict[str, Any]:
  """Only the flags the user gave: the rest stays with gin's bindings."""
  return {k: v for k, v in values.items() if v is not None}


def _named(specs: Sequence[str] | None, flag: str) -> dict[str, str] | None:
  """['name=value', ...] -> {name: value} (names unique), None when the flag was not given."""
  if not specs:
    return None
  out: dict[str, str] = {}
  for spec in specs:
    name, sep, value = spec.partition('=')
    if not sep or not name.strip() or not value.strip():
      raise UsageError(f'{flag} {spec!r}: expected NAME=VALUE')
    if name.strip() in out:
      raise UsageError(f'{flag}: the name {name.strip()!r} is given twice')
    out[name.strip()] = value.strip()
  return out


def _print_json(value: Any) -> None:
  print(json.dumps(value, sort_keys=True), flush=True)


# ------------------------------------------------------------------------------------ argument plumbing


def run_train(args: argparse.Namespace) -> int:
  """Prints the run's summary: `final_files` {file name: path} names every file the method wrote last (e.g.
  {'prefix.npz': MODEL_DIR/final_prefix.npz}), `prompt_file` the one `--prompt_file` takes (null if preempted)."""
  del args  # everything comes from gin
  result = load('train')()
  _print_json({
      'model_dir': result.model_dir, 'step': result.step, 'preempted': result.preempted,
      'final_files': dict(result.final_files), 'prompt_file': result.prompt_file, 'eval_metrics': result.eval_metrics
  })
  return 0


def _bind_prompt_flags(args: argparse.Namespace) -> None:
  """eval / infer's prompt and split flags set fields of their groups (gin), the rest staying as gin has them."""
  gin_config.bind_fields('jaxprompt.PromptSource', prompt_file=args.prompt_file, checkpoint=args.checkpoint,
                         checkpoint_step=args.step, prompts=_named(args.prompt, '--prompt'),
                         allow_other_model=args.allow_other_model)
  gin_config.bind_fields('jaxprompt.DataConfig', split=args.split)


def run_eval(args: argparse.Namespace) -> int:
  _bind_prompt_flags(args)
  _print_json(load('eval')(**_kwargs(output_file=args.output, predictions_file=args.predictions_file)))
  return 0


def run_infer(args: argparse.Namespace) -> int:
  labels = _named(args.labels, '--labels')
  _bind_prompt_flags(args)
  load('infer')(**_kwargs(output_file=args.output, input_file=args.input_file, ensemble=args.ensemble,
                          labels=None if labels is None else {k: v.split('|') for k, v in labels.items()}))
  return 0


def run_export(args: argparse.Namespace) -> int:
  model_dir = None if args.checkpoint else macros.bound('MODEL_DIR')
  _print_json(
      load('export')(args.output, checkpoint=args.checkpoint, step=args.step, model_dir=model_dir,
                     **_kwargs(format=None if args.format == 'file' else args.format, base_model=args.base_model,
                               overwrite=args.overwrite)))
  return 0


def run_inspect(args: argparse.Namespace) -> int:
  _print_json(load('inspect')(args.prompt, **_kwargs(top_k=args.top_k, output_file=args.output)))
  return 0


RUNNERS: dict[str, Callable[[argparse.Namespace], int]] = {
    'train': run_train, 'eval': run_eval, 'infer': run_infer, 'export': run_export, 'inspect': run_inspect
}

# ------------------------------------------------------------------------------------ dispatch


def _uses_gin(args: argparse.Namespace, overrides: Sequence[str]) -> bool:
  """export reads a checkpoint and needs neither TensorFlow nor gin unless gin flags are given, or it writes a run's
  frozen encoder (`--format hf_model --checkpoint MODEL_DIR`: the run's config.gin names it, `run_dir`)."""
  if args.command != 'export' or args.gin_file or args.gin_bindings or overrides:
    return True
  return run_dir.reads_run_config(args.command, getattr(args, 'format', None), getattr(args, 'checkpoint', None))


def _run(args: argparse.Namespace, overrides: Sequence[str]) -> int:
  uses_gin = _uses_gin(args, overrides)
  if uses_gin:  # bad files and values fail here, before the slow imports
    bindings = gin_config.flag_bindings(args.gin_bindings, overrides)
    files = run_dir.gin_files(args.command, args.gin_file, getattr(args, 'checkpoint', None),
                              getattr(args, 'prompt_file', None), getattr(args, 'format', None))
    if files and not args.gin_file:
      logging.getLogger('jaxprompt').info('reading the run directory: gin files %s', ' '.join(files))
    files, bindings = gin_config.prepare(files, bindings, args.gin_search_paths)
    gin_config.import_configurables((TASK_SPECS,), light=args.command in LIGHT_START)
    gin_config.parse(files, bindings, args.gin_search_paths)
  if uses_gin or args.task:
    task_spec = importlib.import_module(TASK_SPECS)
    if uses_gin:  # after gin, so the model's vocabulary binding applies; config.gin records the specs
      task_spec.bind_task_specs(args.task)
      names = [task.name for task in task_spec.register_task_specs()]
      if args.command in LENGTH_COMMANDS:
        task_lengths.derive_unless_set(names, files, bindings, args.gin_search_paths)
    else:
      task_spec.register_task_specs(args.task)
  if args.tfds_data_dir:
    from jaxprompt.data import tasks  # pylint: disable=g-import-not-at-top
    tasks.set_tfds_data_dir(args.tfds_data_dir)
  with compilation_cache.configured(args.compilation_cache_dir):
    return RUNNERS[args.command](args)


def main(argv: Sequence[str] | None = None) -> int:
  """Runs one command; returns the exit code (the console script exits with it)."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  argv = list(sys.argv[1:] if argv is None else argv)
  commands = available()
  if argv[:1] and argv[0] in OWN_PARSERS and argv[0] in commands:
    return load(argv[0])(argv[1:])
  try:
    rest, overrides = parser.split_gin_overrides(argv)
  except UsageError as e:
    return console.fail(str(e), 2)
  args = parser.build_parser(commands).parse_args(rest)  # usage errors: one line, exit 2
  with console.console_logging(), console.quiet_imports():
    return console.run_reporting_errors(lambda: _run(args, overrides))


def entry_point() -> None:
  sys.exit(main())


if __name__ == '__main__':
  entry_point()
