"""The documentation's `jaxprompt` commands run for real, in this process, on models that fit a test.

How a doc command becomes a test run (docs/testing.md, "Commands in the docs"):
* on `models/demo.gin`: the shipped demo model, as written, with DEMO_SIZES appended;
* on any other `models/*.gin`: the t5x fixture model (`models/t5x_tiny.gin`) and the tiny TSV task of
  tests/tiny_task.py: a task the test does not provide becomes the tiny task, TINY_SIZES are appended; a causal LM's
  file (one including `models/layouts/hf_folder.gin`) becomes `models/hf_causal.gin` on the tiny causal model of
  tests/causal_tiny.py (its HF_MODEL_DIR), with the same task and sizes; a BERT / RoBERTa file (`is_encoder`) becomes
  `models/hf_encoder.gin` on the tiny BERT of tests/encoder_tiny.py, a task the test does not provide the tiny task
  read as label ids (`ENCODER_TASK`), with ENCODER_SIZES; a `--task` spec's `conll=` directory is the tiny CoNLL
  files of tests/encoder_tiny.py;
* the appended `--gin.` flags come last, so they win over the doc's own sizes;
* every path is under one temporary root (`doc_commands.localize`), the working directory too; what a command
  reads but no doc command writes is provided: ALIASES (another doc command's output stands in for it), TSV
  files (the tiny task's), `--input_file` (a few lines, or one JSONL request per `--prompt` task), and an
  empty `--tfds_data_dir`;
* commands run in doc order; one whose inputs do not exist yet waits until another command writes them.
"""
from __future__ import annotations

import ast
import dataclasses
import json
import pathlib
import re
from collections.abc import Callable, Sequence

from jaxprompt.data import task_spec
from jaxprompt.models import families
from tests.doc_commands import REPO, USER_PREFIX, Command
from tests.encoder_tiny import write_conll

TINY_MODEL = 'models/t5x_tiny.gin'
DEMO_MODEL = 'models/demo.gin'
CAUSAL_MODEL = 'models/hf_causal.gin'
CAUSAL_LAYOUT = 'models/layouts/hf_folder.gin'  # what every causal LM's (and encoder's) models/*.gin includes
ENCODER_MODEL = 'models/hf_encoder.gin'
ENCODER_TASK = 'doc_tiny_labels'  # the tiny task's files read as label ids (`register_encoder_task`)
ENCODER_MIXTURE = 'my_label_mixture'  # docs/encoders.md's multi-task mixture, of two tasks on those files
ENCODER_MIXTURE_TASKS = (ENCODER_TASK, f'{ENCODER_TASK}_b')
TINY_SIZES = ("--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 8}", '--gin.BATCH_SIZE=4', '--gin.TRAIN_STEPS=2',
              '--gin.CHECKPOINT_PERIOD=2', '--gin.PROMPT_LENGTH=5')
# The shapes of tests/test_encoder_workflow.py's runs (batch 8, 16 tokens, 2 prompt / prefix rows): its compiled
# steps serve these runs from the session's compilation cache.
ENCODER_SIZES = ("--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 1}", '--gin.BATCH_SIZE=8', '--gin.TRAIN_STEPS=2',
                 '--gin.CHECKPOINT_PERIOD=2', '--gin.PROMPT_LENGTH=2')
PREFIX_SIZES = ('--gin.PREFIX_LENGTH=2',)  # with methods/p_tuning_v2.gin (8 rows by default)
TASK_PROMPT_SIZES = ('--gin.TASK_PROMPT_LENGTH=2',)  # with methods/multitask_prompts.gin (50 by default)
DEMO_SIZES = ('--gin.TRAIN_STEPS=2', '--gin.BATCH_SIZE=8', '--gin.CHECKPOINT_PERIOD=2')
TRAIN_SIZES = ('--gin.EVAL_SPLIT=None',)  # `train` only: the doc's eval commands evaluate
# A path the docs read that no doc command writes -> the doc path whose output stands in for it.
ALIASES = {
    'runs/sst2': 'env/MODEL_DIR',  # the README's SST-2 run
    'runs/boolq': 'env/MODEL_DIR',
    'runs/rte/final_prefix.npz': 'tmp/rte_prefix/final_prefix.npz',  # the README's RTE prefix run
    'adapters/my_peft_adapter': 'runs/sst2_adapter',  # the README's PEFT export
    **{f'runs/rte_s{i}/final_prompt.npy': 'env/MODEL_DIR/final_prompt.npy' for i in range(5)},
}
TSV = {'data/train.tsv': 'train', 'data/dev.tsv': 'validation'}  # the tiny task's splits
MIXTURES = {'my_glue_mixture': ('my_glue_rte', 'my_glue_sst2')}  # registered on the tiny task's files
# Commands that do not run here, by doc and a part of the command, with the reason.
NOT_RUN = {
    ('README.md', 'jaxprompt demo'): 'the whole demo takes minutes; tests/test_demo.py runs it on a smaller budget',
    ('docs/tpu.md', '--step 20000'): 'step 20000 of the TPU run launch.sh starts',
}
OUTPUT_FLAGS = ('--output', '--predictions_file')
SENTENCES = ('good movie', 'awful plot', 'a great film')


def is_encoder(model_file: str) -> bool:
  """A BERT / RoBERTa models/*.gin: `ENCODER_MODEL`, or one naming an encoder-only architecture."""
  path = REPO / 'gin_configs' / model_file
  named = re.search(r"name = '(\w+)'", path.read_text()) if path.is_file() else None
  config = families.named_configs().get(named.group(1)) if named else None
  return model_file == ENCODER_MODEL or getattr(config, 'family', None) == 'encoder_only'


def is_causal(model_file: str) -> bool:
  """A causal LM's models/*.gin: it reads a Hugging Face folder (`CAUSAL_LAYOUT`) and is no encoder."""
  path = REPO / 'gin_configs' / model_file
  return path.is_file() and CAUSAL_LAYOUT in path.read_text() and not is_encoder(model_file)


def not_run(command: Command) -> str | None:
  """Why `command` is checked but not run, or None when it runs."""
  if command.sketch:
    return 'a sketch'
  text = ' '.join(command.words)
  return next((why for (doc, part), why in NOT_RUN.items() if command.where.startswith(doc + ':') and part in text),
              None)


def _value(words: Sequence[str], i: int, flag: str) -> str | None:
  """The value of `flag` at words[i] (`--flag=value` or `--flag value`), else None."""
  if words[i].startswith(flag + '='):
    return words[i][len(flag) + 1:]
  return words[i + 1] if words[i] == flag and i + 1 < len(words) else None


def flag_values(words: Sequence[str], flag: str) -> list[str]:
  """Every value of `flag` in `words`, in order."""
  return [v for i in range(len(words)) if (v := _value(words, i, flag)) is not None]


@dataclasses.dataclass
class DocRuns:
  """Runs doc commands under `root` with `main` (`jaxprompt.cli.main.main`); `task` is the tiny task's name,
  `files` its TSV / vocabulary files, `checkpoint` the t5x fixture model, `causal` the tiny causal LM's folder,
  `encoder` the tiny BERT's."""
  root: pathlib.Path
  main: Callable[[list[str]], int]
  task: str
  files: dict
  checkpoint: pathlib.Path
  causal: pathlib.Path | None = None
  encoder: pathlib.Path | None = None

  def argv(self, args: Sequence[str]) -> list[str]:
    """`jaxprompt ARGS` as the test runs it (module docstring)."""
    models = [f for f in flag_values(args, '--gin_file') if f.startswith('models/')]
    train = TRAIN_SIZES if args[0] == 'train' else ()
    if not models or DEMO_MODEL in models:
      return [*args, *DEMO_SIZES, *train] if models else list(args)
    own = {task_spec.parse_task_spec(spec)['name'] for spec in flag_values(args, '--task')}
    encoder = any(is_encoder(f) for f in models)
    causal = any(is_causal(f) for f in models)
    model = ENCODER_MODEL if encoder else CAUSAL_MODEL if causal else TINY_MODEL
    out = []
    for word in args:
      if word.startswith('--gin_file=models/') or word.startswith('models/'):
        word = word.replace(word[word.index('models/'):], model)
      elif word.startswith('--gin.HF_MODEL_DIR='):
        continue  # the tiny causal model's or encoder's, below
      elif word.startswith('--gin.MIXTURE_OR_TASK_NAME='):
        name = ast.literal_eval(word.partition('=')[2])
        if not (name.startswith(USER_PREFIX) or name in own):
          word = f"--gin.MIXTURE_OR_TASK_NAME='{ENCODER_TASK if encoder else self.task}'"
      out.append(word)
    if encoder:
      files = flag_values(args, '--gin_file')
      prefix = PREFIX_SIZES if any('p_tuning_v2' in f for f in files) else ()
      prefix += TASK_PROMPT_SIZES if any('multitask_prompts' in f for f in files) else ()
      return [*out, f"--gin.HF_MODEL_DIR='{self.encoder}'", *ENCODER_SIZES, *prefix, *train]
    if causal:
      return [*out, f"--gin.HF_MODEL_DIR='{self.causal}'", *TINY_SIZES, *train]
    return [
        *out, f"--gin.T5X_TINY_CHECKPOINT='{self.checkpoint}'", f"--gin.VOCABULARY_PATH='{self.files['vocab']}'",
        *TINY_SIZES, *train
    ]

  def outputs(self, argv: Sequence[str]) -> list[pathlib.Path]:
    """What the command writes: `--output`, `--predictions_file`, a training run's MODEL_DIR."""
    found = [v for flag in OUTPUT_FLAGS for v in flag_values(argv, flag)]
    found += [ast.literal_eval(v) for v in flag_values(argv, '--gin.MODEL_DIR')]
    return [self.root / f for f in found]

  def inputs(self, argv: Sequence[str]) -> list[pathlib.Path]:
    """The paths under the root the command reads (every one but its outputs)."""
    outputs = set(self.outputs(argv))
    named = {pathlib.Path(p) for w in argv for p in re.findall(re.escape(str(self.root)) + r"/[^\s'\",\]|]+", w)}
    return sorted(p for p in named if p not in outputs)

  def _alias(self, path: pathlib.Path) -> str | None:
    """The ALIASES entry `path` (under the root) is or lies in, else None."""
    relative = path.relative_to(self.root).as_posix()
    return next((a for a in ALIASES if relative == a or relative.startswith(a + '/')), None)

  def _source(self, path: pathlib.Path) -> pathlib.Path:
    """The doc path that stands in for `path` (ALIASES), else `path`."""
    alias = self._alias(path)
    return path if alias is None else self.root / ALIASES[alias] / path.relative_to(self.root / alias)

  def plan(self, commands: Sequence[Command], wanted: Callable[[Command], bool]) -> list[Command]:
    """The `wanted` commands and the ones that write what they read, in doc order."""
    argv = {c: self.argv(c.jaxprompt_args()) for c in commands}
    chosen = {c for c in commands if wanted(c)}
    while True:
      needed = {self._source(p) for c in chosen for p in self.inputs(argv[c])}
      writers = {
          c for c in commands
          if c not in chosen and any(n.is_relative_to(out) for n in needed for out in self.outputs(argv[c]))
      }
      if not writers:
        return [c for c in commands if c in chosen]
      chosen |= writers

  def provide(self, argv: Sequence[str]) -> None:
    """Writes the command's `--input_file`, and what it reads that the docs never write (module docstring)."""
    names = [spec.partition('=')[0] for spec in flag_values(argv, '--prompt')]
    for name in flag_values(argv, '--input_file'):
      if not names and name.endswith('.jsonl'):  # the docs' one such stream: the encoder multi-task run's
        names = list(ENCODER_MIXTURE_TASKS)
      rows = [json.dumps({'task': t, 'input': s}) for t in names for s in SENTENCES] if names else SENTENCES
      (self.root / name).write_text(''.join(f'{row}\n' for row in rows))
    for path in self.inputs(argv):
      relative, alias = path.relative_to(self.root).as_posix(), self._alias(path)
      if path.exists():
        continue
      if alias is not None and (self.root / ALIASES[alias]).exists():
        (self.root / alias).parent.mkdir(parents=True, exist_ok=True)
        (self.root / alias).symlink_to(self.root / ALIASES[alias])
      elif relative in TSV:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.files[TSV[relative]].read_text())
      elif str(path) in flag_values(argv, '--tfds_data_dir'):
        path.mkdir(parents=True)
      elif any(f'conll={path}' in spec for spec in flag_values(argv, '--task')):
        write_conll(path)

  def run(self, commands: Sequence[Command], read_err: Callable[[], str]) -> list[str]:
    """Runs each distinct command once, in doc order, a command waiting for the inputs another one writes;
    returns the problems (`read_err()` gives what a run wrote to stderr)."""
    pending: dict[tuple[str, ...], list[Command]] = {}
    for command in commands:
      pending.setdefault(tuple(self.argv(command.jaxprompt_args())), []).append(command)
    problems: list[str] = []
    ran = True
    while pending and ran:  # a pass in doc order; again while a pass ran something
      ran = False
      for argv in list(pending):
        self.provide(argv)
        if not all(p.exists() for p in self.inputs(argv)):
          continue
        where, ran = ', '.join(c.where for c in pending.pop(argv)), True
        code = self.main(list(argv))
        stderr, missing = read_err(), [str(p) for p in self.outputs(argv) if not p.exists()]
        if code != 0 or missing:
          problems.append(f'{where}: exit {code}, missing {missing}: {stderr.strip()[-800:]}\n  ran: {argv}')
    for argv, waiting in pending.items():
      missing = [str(p) for p in self.inputs(argv) if not p.exists()]
      problems.append(f'{waiting[0].where}: reads {missing}, which no doc command writes and the test does not '
                      'provide (tests/doc_runs.py ALIASES)')
    return problems


def register_mixtures(task_files: dict, labels: Sequence[str]) -> None:
  """The mixtures of MIXTURES on the tiny task's files (once a process)."""
  import seqio  # pylint: disable=g-import-not-at-top

  from jaxprompt.commands import configs  # pylint: disable=g-import-not-at-top
  from jaxprompt.data import custom  # pylint: disable=g-import-not-at-top
  vocabulary = configs.vocabulary(str(task_files['vocab']), 0)
  for mixture, tasks in MIXTURES.items():
    if mixture in seqio.MixtureRegistry.names():
      continue
    for task in tasks:
      custom.register_file_task(task, train=str(task_files['train']), validation=str(task_files['validation']),
                                label_set=tuple(labels), vocabulary=vocabulary)
    seqio.MixtureRegistry.add(mixture, list(tasks), default_rate=1.0)


def register_encoder_task(task_files: dict, labels: Sequence[str]) -> None:
  """`ENCODER_TASK`: the tiny task's TSV files read as label ids, for the encoder commands; and the docs' label
  mixture (`ENCODER_MIXTURE`) of it and a second task on the same files."""
  from jaxprompt.data import label_files, label_tasks  # pylint: disable=g-import-not-at-top
  for name in ENCODER_MIXTURE_TASKS:
    label_files.register_label_file_task(name, train=str(task_files['train']), validation=str(task_files['validation']),
                                         label_set=tuple(labels))
  label_tasks.register_mixture(ENCODER_MIXTURE, [(task, 1) for task in ENCODER_MIXTURE_TASKS])
