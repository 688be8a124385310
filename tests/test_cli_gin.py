"""gin on the command line: `--gin.NAME=VALUE` splitting, gin file lookup, and values gin cannot parse (one
`jaxprompt: error:` line naming the flag, or file and binding, and for a bare string the quoted form to type
instead). Syntax is checked before any slow import, so these run in milliseconds without TensorFlow or a model."""
import collections
import importlib
import os
import pathlib
import subprocess
import sys

import gin
import pytest

from jaxprompt.cli import gin_config, gin_names, parser
from jaxprompt.cli.main import main as cli_main
from jaxprompt.errors import UsageError

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _clean_gin():
  yield
  gin.clear_config()


def error_of(capsys, argv: list[str]) -> tuple[int, str]:
  """Runs `jaxprompt.cli_main(argv)`; returns (exit code, stderr), which must be one error line."""
  code = cli_main(argv)
  err = capsys.readouterr().err
  assert 'Traceback' not in err, err
  lines = err.splitlines()
  assert len(lines) == 1 and lines[0].startswith('jaxprompt: error: '), err
  return code, lines[0][len('jaxprompt: error: '):]


def test_gin_overrides_are_split_from_other_flags():
  rest, bindings = parser.split_gin_overrides([
      'train', '--gin.MODEL_DIR=\'/tmp/a=b\'', '--gin_file=x.gin', '--gin.TRAIN_STEPS', '10'
  ])
  assert rest == ['train', '--gin_file=x.gin']
  assert bindings == ["MODEL_DIR = '/tmp/a=b'", 'TRAIN_STEPS = 10']
  with pytest.raises(UsageError, match='--gin.X needs a value'):
    parser.split_gin_overrides(['train', '--gin.X'])


def test_gin_files_resolve_in_search_paths(tmp_path):
  (tmp_path / 'mine.gin').write_text('X = 1\n')
  paths = gin_config.search_paths(f'{tmp_path},/nonexistent')
  assert paths[0] == str(tmp_path) and str(REPO / 'jaxprompt' / 'gin_configs') in paths
  assert gin_config.resolve_gin_file('mine.gin', paths) == str(tmp_path / 'mine.gin')
  found = gin_config.resolve_gin_file('runs/prompt_tuning.gin', paths)
  assert os.path.samefile(found, REPO / 'gin_configs/runs/prompt_tuning.gin')


def test_unquoted_string_macro_names_the_macro_and_shows_the_quoting(capsys):
  code, line = error_of(capsys, ['train', '--gin.MODEL_DIR=/tmp/x'])
  assert code == 2
  assert line == ('--gin.MODEL_DIR=/tmp/x: gin could not parse the value /tmp/x; strings need quotes: '
                  '--gin.MODEL_DIR="\'/tmp/x\'"')


@pytest.mark.parametrize('argv', [['--gin.MIXTURE_OR_TASK_NAME=my_task'], ['--gin.MIXTURE_OR_TASK_NAME', 'my_task']])
def test_bare_word_value(capsys, argv):
  code, line = error_of(capsys, ['eval', *argv])
  assert code == 2
  assert line == ('--gin.MIXTURE_OR_TASK_NAME=my_task: gin could not parse the value my_task; strings need '
                  'quotes: --gin.MIXTURE_OR_TASK_NAME="\'my_task\'"')


def test_value_with_spaces(capsys):
  code, line = error_of(capsys, ['infer', '--gin.jaxprompt.infer.vocabulary=my vocab.model'])
  assert code == 2 and line.endswith('strings need quotes: --gin.jaxprompt.infer.vocabulary="\'my vocab.model\'"')


def test_gin_bindings_flag(capsys):
  code, line = error_of(capsys, ['train', '--gin_bindings', 'MODEL_DIR = /tmp/x'])
  assert code == 2
  assert line == ('--gin_bindings="MODEL_DIR = /tmp/x": gin could not parse the value /tmp/x; strings need '
                  'quotes: --gin_bindings="MODEL_DIR = \'/tmp/x\'"')


def test_malformed_literal_gets_no_quoting_advice(capsys):
  code, line = error_of(capsys, ['train', '--gin.BATCH_SIZE=1.2.3'])
  assert code == 2 and line.startswith('--gin.BATCH_SIZE=1.2.3: gin: ') and 'quotes' not in line
  code, line = error_of(capsys, ['train', '--gin.BATCH_SIZE=-x'])
  assert code == 2 and line.startswith('--gin.BATCH_SIZE=-x: gin could not parse the value -x') and 'quotes' not in line


def test_empty_value(capsys):
  code, line = error_of(capsys, ['train', '--gin.MODEL_DIR='])
  assert code == 2 and line.startswith('--gin.MODEL_DIR=: MODEL_DIR has no value')


def test_unterminated_value_names_the_flag(capsys):
  code, line = error_of(capsys, ['train', "--gin.TASK_FEATURE_LENGTHS={'inputs': 8"])
  assert code == 2 and line.startswith("--gin.TASK_FEATURE_LENGTHS={'inputs': 8: gin: ")


def test_bad_value_in_a_gin_file_names_file_line_and_binding(capsys, tmp_path):
  path = tmp_path / 'run.gin'
  path.write_text('TRAIN_STEPS = 3\n\nMODEL_DIR = /tmp/x  # forgot the quotes\n')
  code, line = error_of(capsys, ['train', f'--gin_file={path}'])
  assert code == 2
  assert line == (f'gin file {path}:3: MODEL_DIR: gin could not parse the value /tmp/x; strings need quotes: '
                  "MODEL_DIR = '/tmp/x'")


def test_bad_value_in_an_included_file(tmp_path):
  """Includes are only followed by the real parse (after the configurables are imported): the same message."""
  (tmp_path / 'inner.gin').write_text("X = 1\nY = /tmp/y\n")
  (tmp_path / 'outer.gin').write_text("include 'inner.gin'\n")
  with pytest.raises(UsageError) as error:
    gin_config.parse(['outer.gin'], search_path_flag=str(tmp_path))
  assert str(error.value) == (f"gin file {tmp_path / 'inner.gin'}:2: Y: gin could not parse the value /tmp/y; "
                              "strings need quotes: Y = '/tmp/y'")


def test_plain_string_bindings_read_as_overrides():
  """The demo passes 'NAME = VALUE' strings: an error shows them as the --gin.NAME=VALUE flag it takes."""
  with pytest.raises(UsageError, match=r'^--gin\.RANDOM_SEED=seven: gin could not parse the value seven'):
    gin_config.parse([], ['RANDOM_SEED = seven'])


def test_bindings_keep_their_flag_and_order():
  bindings = gin_config.flag_bindings(['TRAIN_STEPS = 1'], ["MODEL_DIR = 'x'", 'TRAIN_STEPS = 2'])
  assert [b.text for b in bindings] == ['TRAIN_STEPS = 1', "MODEL_DIR = 'x'", 'TRAIN_STEPS = 2']  # overrides last
  assert [b.flag() for b in bindings
         ] == ['--gin_bindings="TRAIN_STEPS = 1"', "--gin.MODEL_DIR='x'", '--gin.TRAIN_STEPS=2']
  gin_config.parse([], bindings)
  assert gin.query_parameter('%TRAIN_STEPS') == 2 and gin.query_parameter('%MODEL_DIR') == 'x'


def test_quote():
  assert gin_config.quote('/tmp/x') == "'/tmp/x'"
  assert gin_config.quote(pathlib.Path("it's")) == '"it\'s"'


def test_checked_before_tensorflow_is_imported():
  """A real process: one stderr line, exit 2, and TensorFlow never loaded (the check needs no configurable)."""
  code = ('import sys; from jaxprompt.cli.main import main as cli_main; '
          "code = cli_main(['train', '--gin_file=runs/prompt_tuning.gin', '--gin.MODEL_DIR=/tmp/x']); "
          "print('tensorflow' in sys.modules, 'jax' in sys.modules); sys.exit(code)")
  env = dict(os.environ, PYTHONPATH=f'{REPO}{os.pathsep}{os.environ.get("PYTHONPATH", "")}')
  proc = subprocess.run([sys.executable, '-c', code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr
  assert proc.stdout.split() == ['False', 'False']
  assert proc.stderr.startswith('jaxprompt: error: --gin.MODEL_DIR=/tmp/x: gin could not parse the value /tmp/x')
  assert proc.stderr.count('\n') == 1


def test_no_two_configurables_share_a_short_name():
  """A run's config.gin names configurables by their shortest unambiguous selector in the process that wrote it;
  another process (say, one that imported the demo) must read it back, so no short name may mean two things."""
  import pkgutil  # pylint: disable=g-import-not-at-top

  import jaxprompt  # pylint: disable=g-import-not-at-top
  for module in pkgutil.walk_packages(jaxprompt.__path__, 'jaxprompt.'):
    if not module.name.endswith('__main__'):
      importlib.import_module(module.name)
  short = collections.defaultdict(list)
  for selector in gin_names.registered():
    if selector.startswith('jaxprompt.'):
      short[selector.rpartition('.')[2]].append(selector)
  assert not {name: full for name, full in short.items() if len(full) > 1}
