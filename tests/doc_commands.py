"""The shell commands of README.md and docs/*.md, collected as a user would type them, and their checks.

The convention (docs/testing.md, "Commands in the docs"):
* a fenced block tagged `sh`, `bash`, `shell` or `console` holds commands; every other block (untagged, `text`,
  `json`, `python`, ...) holds output or code. In a `console` block only the `$ ` lines are commands; in the
  others every line but `# comments`. A trailing `\\` continues a line; `&&`, `||`, `;` and `|` separate
  commands.
* `<!-- not-a-command: why -->` on the line before a block leaves the block out (another project's command).
* `[--flag=value]` is an optional part: checked as if given. A word `...` (or `NAME=...`) elides: the command is
  a sketch, checked but never run. A line starting with `-` adds its flags to the block's previous `jaxprompt`
  command: checked, never run.
* `$NAME` / `${NAME}` and absolute paths (`/runs/x`, `'/tmp/x'`) stand for places under one temporary root.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import io
import pathlib
import re
import shlex
import tomllib
from collections.abc import Iterator, Sequence

REPO = pathlib.Path(__file__).resolve().parents[1]
DOCS = (REPO / 'README.md', *sorted((REPO / 'docs').glob('*.md')))
SHELL = ('sh', 'bash', 'shell', 'console')
SKIP = re.compile(r'<!--\s*not-a-command\b')
FENCE = re.compile(r'^([ \t]*)```\s*(\w*)')
SEPARATORS = ('&&', '||', ';', '|', '&')
ABSOLUTE = re.compile(r"(?<![\w.:/~}$-])/(?=[A-Za-z_])")  # '/runs/x', "'/tmp/x'", '=/data/x'; not 'gs://', 'a/b'
VARIABLE = re.compile(r'\$\{(\w+)\}|\$(\w+)')
PYTHONS = ('python', 'python3')
REPO_FOLDERS = ('bench', 'docs', 'gin_configs', 'jaxprompt', 'tests', 'tpu_scripts')
USER_PREFIX = 'my_'  # `my_task`, `my_glue_mixture`: the reader's own tasks, not jaxprompt's
TASK_MACRO = 'MIXTURE_OR_TASK_NAME'


@dataclasses.dataclass(frozen=True)
class Command:
  """One command of a doc: `words` as the shell splits them (leading NAME=value assignments dropped), where it
  starts (`docs/x.md:12`), and whether it is a sketch (elided or a fragment: checked, never run)."""
  where: str
  words: tuple[str, ...]
  sketch: bool = False

  @property
  def program(self) -> str:
    """The program, without a venv's `.venv/bin/`."""
    return self.words[0].removeprefix('.venv/bin/')

  def jaxprompt_args(self) -> list[str] | None:
    """The arguments of a `jaxprompt` (or `python -m jaxprompt`) command, else None."""
    if self.program == 'jaxprompt':
      return list(self.words[1:])
    if self.program in PYTHONS and list(self.words[1:3]) == ['-m', 'jaxprompt']:
      return list(self.words[3:])
    return None


# ------------------------------------------------------------------------------------ collecting


def _blocks(text: str) -> Iterator[tuple[int, str, list[str]]]:
  """(line number of the first content line, language, dedented lines) of each command block."""
  lines = text.splitlines()
  i = 0
  while i < len(lines):
    match = FENCE.match(lines[i])
    if not match:
      i += 1
      continue
    end = next(j for j in range(i + 1, len(lines)) if lines[j].strip().startswith('```'))
    indent = len(match.group(1))
    if match.group(2) in SHELL and not (i and SKIP.search(lines[i - 1])):
      yield i + 2, match.group(2), [line[indent:] for line in lines[i + 1:end]]
    i = end + 1


def _logical_lines(first: int, language: str, lines: Sequence[str]) -> Iterator[tuple[int, str]]:
  """(line number, text) of each command line, continuations joined."""
  parts: list[str] = []
  start = first
  for number, line in enumerate(lines, first):
    if not parts:
      stripped = line.strip()
      if language == 'console':
        if not stripped.startswith('$ '):
          continue
        line = stripped[2:]
      elif not stripped or stripped.startswith('#'):
        continue
      start = number
    if line.rstrip().endswith('\\'):
      parts.append(line.rstrip()[:-1])
      continue
    yield start, ' '.join([*parts, line])
    parts = []


def split_words(text: str) -> list[list[str]]:
  """The simple commands of a shell line as word lists (a `#` word starts a comment)."""
  lexer = shlex.shlex(text, posix=True, punctuation_chars='&;|')
  lexer.whitespace_split = True
  lexer.commenters = ''
  commands: list[list[str]] = [[]]
  for word in lexer:
    if word.startswith('#'):
      break
    if word in SEPARATORS:
      commands.append([])
    else:
      commands[-1].append(word)
  return [c for c in commands if c]


def _optional_parts(words: Sequence[str]) -> list[str]:
  """`[--flag=value]` and `[--flag value]` as if given."""
  out, inside = [], False
  for word in words:
    if word.startswith('[-'):
      word, inside = word[1:], True
    if inside and word.endswith(']'):
      word, inside = word[:-1], False
    out.append(word)
  return out


def localize(text: str, root: str) -> str:
  """Absolute paths and `$NAME` variables of a doc line as places under `root` (`$NAME` -> root/env/NAME)."""
  text = ABSOLUTE.sub(root.rstrip('/') + '/', text)
  return VARIABLE.sub(lambda m: f'{root}/env/{m.group(1) or m.group(2)}', text)


def collect(path: pathlib.Path, root: str) -> list[Command]:
  """Every command of the doc at `path`, in order, its paths and variables under `root`."""
  out: list[Command] = []
  name = path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else path.name
  for first, language, lines in _blocks(path.read_text()):
    previous: Command | None = None
    for number, text in _logical_lines(first, language, lines):
      fragment = text.lstrip().startswith('-')
      for words in split_words(localize(text, root)):
        while words and re.match(r'^\w+=', words[0]):  # NAME=value before the program
          words = words[1:]
        if not words or words[0] == 'export':
          continue
        sketch = any('...' in w for w in words)
        words = [w for w in _optional_parts(words) if w != '...']
        if fragment and previous is not None:
          command = Command(f'{name}:{number}', (*previous.words, *words), True)
        else:
          command = Command(f'{name}:{number}', tuple(words), sketch)
        out.append(command)
        if command.jaxprompt_args() is not None and not fragment:
          previous = command
  return out


def exported(paths: Sequence[pathlib.Path]) -> dict[str, str]:
  """The variables the docs' `export NAME=value` lines set, later ones seeing earlier ones."""
  values: dict[str, str] = {}
  for path in paths:
    for first, language, lines in _blocks(path.read_text()):
      for _, text in _logical_lines(first, language, lines):
        for words in split_words(text):
          if words[0] == 'export':
            for word in words[1:]:
              key, _, value = word.partition('=')
              values[key] = VARIABLE.sub(lambda m: values.get(m.group(1) or m.group(2), ''), value)
  return values


# ------------------------------------------------------------------------------------ checks without jaxprompt


def _repo_paths(words: Sequence[str]) -> Iterator[str]:
  """The words (or `--flag=` values) that name a path inside the repository's source folders."""
  for word in words:
    for candidate in (word, word.partition('=')[2]):
      if candidate.split('/')[0] in REPO_FOLDERS and '/' in candidate.rstrip('/'):
        yield candidate


def _module_exists(name: str) -> bool:
  try:
    return importlib.util.find_spec(name) is not None
  except ModuleNotFoundError:  # its parent package is missing
    return False


def _extras() -> set[str]:
  return set(tomllib.loads((REPO / 'pyproject.toml').read_text())['project']['optional-dependencies'])


def check_other(command: Command) -> list[str]:
  """Problems of a command that is not jaxprompt's: repository paths it names that do not exist, a `python -m`
  module that cannot be found, a `pip install '.[extra]'` extra pyproject.toml does not define."""
  problems = [f'{p} does not exist in the repository' for p in _repo_paths(command.words) if not (REPO / p).exists()]
  words = command.words
  if command.program in PYTHONS and len(words) > 2 and words[1] == '-m' and not _module_exists(words[2]):
    problems.append(f'python -m {words[2]}: no such module')
  if command.program == 'pip':
    for word in words:
      match = re.fullmatch(r'(\.|jaxprompt)\[([\w,-]+)\]', word)
      unknown = set(match.group(2).split(',')) - _extras() if match else set()
      if unknown:
        problems.append(f'{word}: pyproject.toml has no extra {sorted(unknown)}')
  return problems


# ------------------------------------------------------------------------------------ jaxprompt commands


def _argparse(parser, args: Sequence[str]) -> tuple[object | None, str | None]:
  """(namespace, None) or (None, argparse's error line)."""
  stderr = io.StringIO()
  try:
    with contextlib.redirect_stderr(stderr):
      return parser.parse_args(list(args)), None
  except SystemExit:
    return None, (stderr.getvalue().strip().splitlines() or ['argparse exited'])[-1]


def _macro_names(config: str, *, bound: bool) -> set[str]:
  """Macros gin's config text binds (`NAME = ...` lines) or references (`%NAME`)."""
  pattern = r'^([A-Za-z_]\w*) = ' if bound else r'%(?:[\w.]+/)*([A-Za-z_]\w*)'
  return set(re.findall(pattern, config, re.M))


def check_jaxprompt(args: Sequence[str], search_paths: str = '') -> str | None:
  """The problem `jaxprompt ARGS` has before anything runs, or None: its flags through the real parser, its gin
  files, bindings and macros through the real gin parsing, and the task it names. Needs
  `gin_config.import_configurables()` first; leaves gin configured (callers clear it)."""
  import gin  # pylint: disable=g-import-not-at-top

  from jaxprompt.cli import gin_config, parser  # pylint: disable=g-import-not-at-top
  from jaxprompt.cli import main as dispatch  # pylint: disable=g-import-not-at-top
  from jaxprompt.data import task_spec  # pylint: disable=g-import-not-at-top
  from jaxprompt.errors import JaxPromptError  # pylint: disable=g-import-not-at-top
  from jaxprompt.formats import macros  # pylint: disable=g-import-not-at-top
  if args[:1] and args[0] in dispatch.OWN_PARSERS:
    module = importlib.import_module(dispatch.COMMANDS[args[0]].partition(':')[0])
    return _argparse(module.build_parser(), args[1:])[1]
  try:
    rest, overrides = parser.split_gin_overrides(args)
    namespace, error = _argparse(parser.build_parser(dispatch.available()), rest)
    if error:
      return error
    own_tasks = {task_spec.parse_task_spec(spec)['name'] for spec in namespace.task}
    paths = ','.join(p for p in (search_paths, namespace.gin_search_paths) if p)
    bindings = gin_config.flag_bindings(namespace.gin_bindings, overrides)
    if not (namespace.gin_file or bindings):
      return None  # export reads a checkpoint without gin
    gin_config.parse(namespace.gin_file, [], paths)
    files_config = gin.config_str()
    gin_config.parse(namespace.gin_file, bindings, paths)
  except JaxPromptError as e:
    return str(e)
  known = _macro_names(files_config, bound=True) | _macro_names(files_config, bound=False)
  for binding in bindings:
    known |= _macro_names(binding.text.partition(' = ')[2], bound=False)
  for binding in bindings:
    name = binding.text.partition(' = ')[0].strip()
    if '.' not in name and name not in known:
      return f'{binding.flag()}: no gin file given binds or uses the macro {name}'
  task = macros.bound(TASK_MACRO)
  if isinstance(task, str) and not task.startswith(USER_PREFIX) and task not in own_tasks and not _registered(task):
    return f'{TASK_MACRO} {task!r} is not a registered seqio task or mixture'
  return None


def _registered(task: str) -> bool:
  """Whether jaxprompt finds the task as a run would (`data.tasks.get_task`: the demo's register on lookup)."""
  from jaxprompt.data import tasks  # pylint: disable=g-import-not-at-top
  from jaxprompt.errors import DataError  # pylint: disable=g-import-not-at-top
  try:
    tasks.get_task(task)
  except DataError:
    return False
  return True
