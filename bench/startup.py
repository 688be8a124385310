"""The fixed cost of a `jaxprompt` call: `infer` (8 text inputs), `eval` (8 examples of the demo task),
`eval_task` (eval of the same 8 examples as a `--task` TSV file) and `inspect` of a prompt on the shipped demo
model, each a fresh process, with the compilation cache off, on a first call (empty cache) and on a repeated
call (the same cache again); `--help` as the floor.

  python bench/startup.py [--reps 3] [--base DIR] [--phases] [--commands infer,eval,eval_task,inspect,help]

Every call is timed by wall clock around the whole process (start-up, imports, gin, checkpoint, compile, run,
exit), with the load average beside it; each round runs every variant once, in a rotated order, and the table
shows medians and each variant's ratio to "cache off". `--base DIR` also times another checkout of jaxprompt (e.g.
`git worktree add /tmp/base <commit>`) with the same commands, as "before" (its cache flags are left out).
`--phases` then runs each command once more (cache off, repeated, and `--base`'s) with its phases timed
(imports, gin parsing, checkpoint load, tracing, lowering, compile; `command` is everything after gin). The
prompt comes from a 2-step `jaxprompt train` on the demo task (not timed). Prints the tables and one line
starting with `JSON `.
"""
from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = ['--gin_file=models/demo.gin']
VARIANTS = ('cache off', 'first call', 'repeated call')
# JAX's monitoring events timed by --phases (their last path component names the phase).
EVENTS = ('/jax/core/compile/jaxpr_trace_duration', '/jax/core/compile/jaxpr_to_mlir_module_duration',
          '/jax/core/compile/backend_compile_duration')


def commands(prompt: str, inputs: str, out: str) -> dict[str, list[str]]:
  """The timed command lines (argv after `jaxprompt`); `inputs` is the text file, `inputs`.tsv the same inputs
  with their labels."""
  return {
      'infer': [
          'infer', *DEMO, '--gin_file=runs/prompt_infer.gin', f'--prompt_file={prompt}', f'--input_file={inputs}',
          f'--output={out}/infer.jsonl'
      ],
      'eval': [
          'eval', *DEMO, '--gin_file=runs/prompt_eval.gin', "--gin.MIXTURE_OR_TASK_NAME='demo_heldout_topic'",
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 24, 'targets': 4}", '--gin.jaxprompt.DataConfig.max_examples=8',
          f'--prompt_file={prompt}', f'--output={out}/eval.json'
      ],
      'eval_task': [
          'eval', *DEMO, '--gin_file=runs/prompt_eval.gin', f'--task=name=bench_topic,validation={inputs}.tsv',
          "--gin.MIXTURE_OR_TASK_NAME='bench_topic'", f'--prompt_file={prompt}', f'--output={out}/eval_task.json'
      ],
      'inspect': ['inspect', prompt, *DEMO, f'--output={out}/inspect.json'],
      'help': ['--help'],
  }


def environment() -> dict[str, str]:
  """This environment without any compilation cache setting (each variant sets its own)."""
  env = {k: v for k, v in os.environ.items() if k not in ('JAX_COMPILATION_CACHE_DIR', 'JAXPROMPT_COMPILATION_CACHE')}
  return dict(env, TF_CPP_MIN_LOG_LEVEL='3', JAX_PLATFORMS='cpu')


def _children_cpu() -> float:
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def run(repo: str, argv: Sequence[str], extra: Sequence[str] = ()) -> tuple[float, float, float]:
  """(wall seconds, CPU seconds, 1-minute load average at the start) of one process running `jaxprompt argv`.
  The CPU seconds (user + system, every thread) move much less with other people's load than the wall."""
  load, cpu = os.getloadavg()[0], _children_cpu()
  start = time.perf_counter()
  proc = subprocess.run([sys.executable, '-m', 'jaxprompt', *argv, *extra], cwd=repo, capture_output=True, text=True,
                        timeout=600, env=dict(environment(), PYTHONPATH=repo))
  wall = time.perf_counter() - start
  if proc.returncode != 0:
    raise RuntimeError(f'{" ".join(argv)} failed in {repo} ({proc.returncode}):\n{proc.stderr[-3000:]}')
  return wall, _children_cpu() - cpu, load


def prepare(work: str) -> tuple[str, str]:
  """A 2-step demo prompt and 8 held-out demo inputs, as text and as a TSV with their labels (not timed)."""
  sys.path.insert(0, REPO)
  from jaxprompt.demo import data  # pylint: disable=g-import-not-at-top
  inputs = os.path.join(work, 'inputs.txt')
  examples = data.heldout_examples('topic', 8, 1, 'validation')
  with open(inputs, 'w', encoding='utf-8') as f:
    f.writelines(text + '\n' for text, _ in examples)
  with open(inputs + '.tsv', 'w', encoding='utf-8') as f:
    f.writelines(f'{text}\t{label}\n' for text, label in examples)
  model_dir = os.path.join(work, 'run')
  run(REPO, [
      'train', *DEMO, '--gin_file=runs/demo.gin', '--gin.TRAIN_STEPS=2', f"--gin.MODEL_DIR='{model_dir}'",
      '--gin.EVAL_MAX_EXAMPLES=8', '--no_compilation_cache'
  ])
  return os.path.join(model_dir, 'final_prompt.npy'), inputs


def variant_flags(variant: str, cache: str, work: str) -> list[str]:
  """The cache flags of a variant: none, a fresh empty directory, or `cache` (warmed by an earlier call)."""
  if variant == 'cache off':
    return ['--no_compilation_cache']
  if variant == 'first call':
    return [f'--compilation_cache_dir={tempfile.mkdtemp(dir=work, prefix="xla-first-")}']
  return [f'--compilation_cache_dir={cache}']


def time_all(argvs: dict[str, list[str]], reps: int, work: str, base: str | None) -> dict[str, dict[str, list]]:
  """{command: {variant: [(wall, cpu, load), ...]}}, every variant once per round in a rotated order."""
  caches = {name: os.path.join(work, f'xla-{name}') for name in argvs}
  for name, argv in argvs.items():  # warm the repeated-call caches (and the OS file cache)
    run(REPO, argv, variant_flags('repeated call', caches[name], work))
  variants = list(VARIANTS) + (['before'] if base else [])
  samples: dict[str, dict[str, list]] = collections.defaultdict(lambda: collections.defaultdict(list))
  for r in range(reps):
    for name, argv in argvs.items():
      names = variants if name != 'help' else ['cache off'] + (['before'] if base else [])
      for variant in names[r % len(names):] + names[:r % len(names)]:
        if variant == 'before':
          sample = run(base, argv)
        else:
          sample = run(REPO, argv, variant_flags(variant, caches[name], work) if name != 'help' else [])
        samples[name][variant].append(sample)
        print(f'  {name:8s} {variant:14s} {sample[0]:6.2f} s wall  {sample[1]:6.2f} s CPU  (load {sample[2]:.2f})',
              flush=True)
  return samples


def median(values: Sequence[float]) -> float:
  ordered = sorted(values)
  mid = len(ordered) // 2
  return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def report(samples: dict[str, dict[str, list]]) -> None:
  print('\ncommand   variant        median wall  × cache off   median CPU  × cache off   median load')
  for name, by_variant in samples.items():
    off = [median([s[i] for s in by_variant['cache off']]) for i in range(2)]
    for variant, values in by_variant.items():
      wall, cpu, load = (median([s[i] for s in values]) for i in range(3))
      print(f'{name:9s} {variant:14s} {wall:8.2f} s  {wall / off[0]:9.2f}×  {cpu:8.2f} s  {cpu / off[1]:9.2f}×  '
            f'{load:9.2f}')


# ------------------------------------------------------------------------------------ --phases


def _timed(phases: collections.Counter, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    start = time.perf_counter()
    try:
      return fn(*args, **kwargs)
    finally:
      phases[name] += time.perf_counter() - start

  return wrapper


def phases_main(argv: Sequence[str]) -> int:
  """Runs `jaxprompt argv` in this process; prints `PHASES {json}` on stdout (seconds per phase)."""
  start = time.perf_counter()
  phases: collections.Counter = collections.Counter()
  import importlib  # pylint: disable=g-import-not-at-top
  gin_config = importlib.import_module('jaxprompt.cli.gin_config')
  dispatch = importlib.import_module('jaxprompt.cli.main')
  imports = gin_config.import_configurables

  def on_duration(event: str, secs: float, **kwargs) -> None:
    del kwargs
    if event in EVENTS:
      phases[event.rsplit('/', 1)[-1]] += secs

  def import_configurables(*args, **kwargs):
    result = _timed(phases, 'imports', imports)(*args, **kwargs)
    import jax  # pylint: disable=g-import-not-at-top

    from jaxprompt.runtime import runtime  # pylint: disable=g-import-not-at-top  (callers look it up by module)
    jax.monitoring.register_event_duration_secs_listener(on_duration)
    runtime.build_runtime = _timed(phases, 'build_runtime (checkpoint load)', runtime.build_runtime)
    return result

  gin_config.import_configurables = import_configurables
  gin_config.parse = _timed(phases, 'gin parsing', gin_config.parse)
  for name, runner in list(dispatch.RUNNERS.items()):
    dispatch.RUNNERS[name] = _timed(phases, 'command', runner)
  code = dispatch.main(list(argv))
  phases['total in process'] = time.perf_counter() - start
  print('PHASES ' + json.dumps({k: round(v, 3) for k, v in phases.items()}))
  return code


def time_phases(argvs: dict[str, list[str]], work: str, base: str | None) -> dict[str, dict[str, float]]:
  """Each command's phases, cache off and repeated (and `base`'s, "before"), one process each."""
  out = {}
  for name, argv in argvs.items():
    if name == 'help':
      continue
    for variant in ('cache off', 'repeated call') + (('before',) if base else ()):
      repo = base if variant == 'before' else REPO
      flags = [] if variant == 'before' else variant_flags(variant, os.path.join(work, f'xla-{name}'), work)
      proc = subprocess.run([sys.executable, os.path.abspath(__file__), '--_phases', *argv, *flags], cwd=repo,
                            capture_output=True, text=True, timeout=600, env=dict(environment(), PYTHONPATH=repo))
      line = next((x for x in proc.stdout.splitlines() if x.startswith('PHASES ')), None)
      if line is None:
        raise RuntimeError(f'{name} --phases failed:\n{proc.stderr[-3000:]}')
      out[f'{name}, {variant}'] = json.loads(line[len('PHASES '):])
      print(f'{name:8s} {variant:14s} ' + '  '.join(f'{k} {v:.2f}' for k, v in out[f'{name}, {variant}'].items()))
  return out


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv[:1] == ['--_phases']:
    sys.path.insert(0, os.getcwd())  # this checkout or --base
    return phases_main(argv[1:])
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--reps', type=int, default=3, help='rounds (every variant once per round)')
  parser.add_argument('--base', default=None, help='another jaxprompt checkout, timed as "before"')
  parser.add_argument('--phases', action='store_true', help='also time the phases of each command')
  parser.add_argument('--commands', default='infer,eval,eval_task,inspect,help', help='comma-separated subset to time')
  args = parser.parse_args(argv)
  work = tempfile.mkdtemp(prefix='jaxprompt-startup-')
  try:
    prompt, inputs = prepare(work)
    argvs = {k: v for k, v in commands(prompt, inputs, work).items() if k in args.commands.split(',')}
    samples = time_all(argvs, args.reps, work, args.base and os.path.abspath(args.base))
    report(samples)
    phases = time_phases(argvs, work, args.base and os.path.abspath(args.base)) if args.phases else {}
    print('JSON ' + json.dumps({'samples': samples, 'phases': phases, 'reps': args.reps}, sort_keys=True))
  finally:
    shutil.rmtree(work, ignore_errors=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
