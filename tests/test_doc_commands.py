"""Every command a user can type from README.md and docs/*.md (the convention: docs/testing.md, "Commands in the
docs"): each one checked as jaxprompt's parser and gin parsing see it, and every `jaxprompt` command that can
run here run for real, in this process, on the demo model or the t5x fixture model (tests/doc_runs.py)."""
import ast
import pathlib
import re

import gin
import numpy as np
import pytest
import seqio

from jaxprompt.cli import gin_config
from jaxprompt.cli.main import main as cli_main
from jaxprompt.data import custom
from tests import doc_commands, doc_runs
from tests.doc_commands import REPO, Command, check_jaxprompt, check_other, collect
from tests.tiny_task import LABELS
from tests.tpu_helpers import run_script

pytestmark = pytest.mark.usefixtures('clean_gin')  # the checks leave gin bindings behind


def _commands(root) -> list[Command]:
  return [c for path in doc_commands.DOCS for c in collect(path, str(root))]


def _problems(commands, env) -> list[str]:
  """Each command's problem as `doc:line: command: problem`."""
  gin_config.import_configurables()
  exports = doc_commands.exported(doc_commands.DOCS)
  problems = []
  for command in commands:
    args = command.jaxprompt_args()
    found = [check_jaxprompt(args)] if args is not None else check_other(command)
    if command.program.startswith('tpu_scripts/') and not found:
      found = _tpu_script_problems(command, dict(env, **exports))
    problems += [f'{command.where}: {" ".join(command.words)[:100]}: {p}' for p in found if p]
  return problems


def _tpu_script_problems(command: Command, env) -> list[str]:
  """A TPU script under --dry-run (it prints the gcloud commands; the fake gcloud fails loudly if called), and
  for launch.sh the `jaxprompt train` its gin flags and the words after `--` become (gin files resolved from the
  repository, as launch.sh copies gin_configs/ next to the run)."""
  name = command.program.removeprefix('tpu_scripts/').removesuffix('.sh')
  proc = run_script(name, ['--dry-run', *command.words[1:]], env)
  if proc.returncode != 0:
    return [proc.stderr.strip()]
  if name != 'launch':
    return []
  words = list(command.words[1:])
  extra = words[words.index('--') + 1:] if '--' in words else []
  gin_flags = [w for w in words[:len(words) - len(extra)] if w.startswith(('--gin_file=', '--gin.'))]
  return [check_jaxprompt(['train', *gin_flags, *extra, "--gin.MODEL_DIR='gs://b/run'"], str(REPO))]


def test_every_doc_command_parses_and_names_what_exists(env, tmp_path):
  commands = _commands(tmp_path)
  assert len([c for c in commands if c.jaxprompt_args() is not None]) > 20, 'commands missing: is collect broken?'
  problems = _problems(commands, env)
  assert not problems, 'doc commands that would fail (fix the doc, or docs/testing.md explains):\n' + '\n'.join(
      problems)


BAD_DOC = '''# A doc with one mistake a line

```sh
jaxprompt eval --prompt_fil=x.npy
jaxprompt train --gin_file=models/t5_1_1_nano.gin
jaxprompt train --gin_file=models/t5_1_1_base.gin --gin.jaxprompt.trian.batch_size=8
jaxprompt train --gin_file=models/t5_1_1_base.gin --gin_file=runs/prompt_tuning.gin --gin.jaxprompt.train.batchsize=8
jaxprompt train --gin_file=models/t5_1_1_base.gin --gin_file=runs/prompt_tuning.gin \\
  --gin.MODLE_DIR="'/tmp/x'"
jaxprompt eval --gin_file=models/t5_1_1_base.gin --gin_file=runs/prompt_eval.gin \\
  --gin.MIXTURE_OR_TASK_NAME="'taskless_glue_sst3_v200'"
tpu_scripts/lunch.sh --run x
.venv/bin/python -m bench.plan_stp && pip install -e '.[tset]'
tpu_scripts/create.sh --acclerator-type v3-8
tpu_scripts/launch.sh --run x --gin_file=gin_configs/models/t5_1_1_base.gin --gin.MODLE_PARALLEL=2
```

```console
$ jaxprompt export --format npz --output x
output lines are not commands
```

<!-- not-a-command: another project's command -->
```sh
python3 -m t5x.train --gin_file=x.gin
```

```
jaxprompt eval --not-a-flag (an untagged block: output)
```
'''


def test_a_wrong_doc_command_fails_naming_its_doc_and_line(env, tmp_path):
  doc = tmp_path / 'bad.md'
  doc.write_text(BAD_DOC)
  problems = _problems(collect(doc, str(tmp_path)), env)
  expected = [
      ('bad.md:4:', 'unrecognized arguments: --prompt_fil=x.npy'),
      ('bad.md:5:', 'gin file models/t5_1_1_nano.gin not found; did you mean models/t5_1_1_'),
      ('bad.md:6:', "No configurable matching 'jaxprompt.trian'"),
      ('bad.md:7:', "doesn't have a parameter named 'batchsize'"),
      ('bad.md:8:', 'no gin binding uses the macro MODLE_DIR'),
      ('bad.md:10:', "'taskless_glue_sst3_v200' is not a registered seqio task"),
      ('bad.md:12:', 'tpu_scripts/lunch.sh does not exist'),
      ('bad.md:13:', 'python -m bench.plan_stp: no such module'),
      ('bad.md:13:', "pyproject.toml has no extra ['tset']"),
      ('bad.md:14:', "unknown flag '--acclerator-type'"),
      ('bad.md:15:', 'no gin binding uses the macro MODLE_PARALLEL'),
      ('bad.md:19:', "argument --format: invalid choice: 'npz'"),
  ]
  assert len(problems) == len(expected), '\n'.join(problems)
  for problem, (where, what) in zip(problems, expected):
    assert problem.startswith(where) and what in problem, problem


def test_collect_follows_the_shell_and_the_convention(tmp_path):
  doc = tmp_path / 'doc.md'
  doc.write_text('''```bash
# a comment
A=1 jaxprompt infer ... --prompt s0=... --input_file in.txt  # trailing comment
jaxprompt train --gin_file=models/x.gin \\
  --gin.MODEL_DIR="'${MODEL_DIR}'" [--gin.PACK=True] --checkpoint /runs/a
# a variant of the command above
  --gin.PROMPT_INIT_FILE="['/runs/a.npy', '/runs/b.npy']"
```
''')
  infer, train, variant = collect(doc, '/R')
  assert infer == Command('doc.md:3', ('jaxprompt', 'infer', '--prompt', 's0=...', '--input_file', 'in.txt'), True)
  assert train == Command('doc.md:4',
                          ('jaxprompt', 'train', '--gin_file=models/x.gin', "--gin.MODEL_DIR='/R/env/MODEL_DIR'",
                           '--gin.PACK=True', '--checkpoint', '/R/runs/a'))
  assert variant.sketch and variant.words == (*train.words, "--gin.PROMPT_INIT_FILE=['/R/runs/a.npy', '/R/runs/b.npy']")


def test_runs_wait_for_what_they_read_and_report_failures(tmp_path):
  """The runner with a stand-in for `main`: a command waits for the doc command writing its input, a failing one is
  reported with its doc line and stderr, and one whose input nothing writes is named."""
  doc = tmp_path / 'doc.md'
  doc.write_text('''```sh
jaxprompt eval --prompt_file=/runs/never_written/p.npy --output=e.json
jaxprompt export --checkpoint /runs/a --output /runs/b.npy
jaxprompt train --gin_file=models/demo.gin --gin.MODEL_DIR="'/runs/a'"
```
''')
  ran = []

  def main(argv):
    ran.append(argv[0])
    for model_dir in doc_runs.flag_values(argv, '--gin.MODEL_DIR'):
      pathlib.Path(ast.literal_eval(model_dir)).mkdir(parents=True)
    return 0 if argv[0] == 'train' else 2

  runs = doc_runs.DocRuns(tmp_path, main, 'tiny', {}, tmp_path)
  problems = runs.run(collect(doc, str(tmp_path)), lambda: 'jaxprompt: error: boom')
  assert ran == ['train', 'export'], ran
  assert len(problems) == 2 and problems[0].startswith('doc.md:3: exit 2') and 'boom' in problems[0], problems
  assert problems[1].startswith('doc.md:2: reads') and 'never_written' in problems[1], problems


# The runs, in three tests of the slow suite (each with the commands that write what its own commands read).
GROUPS = {
    'demo_model': lambda text: 'demo' in text,  # models/demo.gin, the demo run, its adapter
    'methods_and_banks': lambda text: re.search(r'methods/|prefix|--prompt[ =]', text),  # + prompt banks
    'prompt_tuning': lambda text: True,
}


def _group(command: Command, root) -> str:
  text = ' '.join(command.words).replace(str(root), '')
  return next(name for name, test in GROUPS.items() if test(text))


@pytest.mark.slow
@pytest.mark.parametrize('group', ['prompt_tuning', 'methods_and_banks', 'demo_model'])  # later ones reuse compiles
def test_the_doc_commands_run(group, tmp_path, tiny_files, tiny_task, tiny_causal, tiny_bert, fixtures_dir, capsys,
                              monkeypatch):
  doc_runs.register_mixtures(tiny_files, LABELS)
  doc_runs.register_encoder_task(tiny_files, LABELS)
  commands = [c for c in _commands(tmp_path) if c.jaxprompt_args() is not None and doc_runs.not_run(c) is None]
  runs = doc_runs.DocRuns(tmp_path, cli_main, tiny_task.name, tiny_files,
                          fixtures_dir / 't5x_tiny' / 'classic_checkpoint_0', tiny_causal, tiny_bert)
  planned = runs.plan(commands, lambda c: _group(c, tmp_path) == group)
  assert any(_group(c, tmp_path) == group for c in planned)
  monkeypatch.chdir(tmp_path)
  before = set(seqio.TaskRegistry.names())
  try:
    problems = runs.run(planned, lambda: capsys.readouterr().err)
  finally:
    gin.clear_config()
    for name in set(seqio.TaskRegistry.names()) - before:  # a doc's `--task my_reviews` is this group's alone
      if custom.is_file_task(name):
        custom.unregister_file_task(name)
  assert not problems, '\n'.join(problems)
  if group == 'prompt_tuning':  # the README's causal workflow ends in python: its adapter loads in PEFT
    _load_the_readme_adapter_in_peft(tmp_path, tiny_causal, capsys)


def _load_the_readme_adapter_in_peft(root, tiny_causal, capsys) -> None:
  """Runs the python block of the README's "Causal LMs" section (its model folder: the tiny causal model) after
  the section's commands ran, and checks the PeftModel holds the run's prompt."""
  pytest.importorskip('peft')
  readme = (REPO / 'README.md').read_text()
  start = readme.index('## Causal LMs')
  section = readme[start:readme.index('\n## ', start)]
  python = doc_commands.localize(re.search(r'```python\n(.*?)```', section, re.S).group(1), str(root))
  folder = pathlib.Path(re.search(r"from_pretrained\('([^']+)'\)", python).group(1))
  folder.parent.mkdir(parents=True, exist_ok=True)
  folder.symlink_to(tiny_causal)
  namespace = {}
  capsys.readouterr()
  exec(compile(python, 'README.md', 'exec'), namespace)  # pylint: disable=exec-used
  assert capsys.readouterr().out.strip()  # the next token's text
  run_dir = pathlib.Path(doc_commands.localize('/runs/llama_sst2', str(root)))
  prompt = namespace['model'].get_prompt_embedding_to_save('default').detach().numpy()
  np.testing.assert_allclose(prompt, np.load(run_dir / 'final_prompt.npy'), rtol=1e-6)
