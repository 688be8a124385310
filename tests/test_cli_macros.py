"""Configuration slips are one line, before anything is written: every documented gin macro against the macro table
(`jaxprompt/formats/macros.py`) right after gin is parsed, the groups agreeing with it, close matches for a
mistyped gin file, configurable, parameter or macro, and the table as docs/workflow.md shows it.

In process (`cli_main(argv)`): the first call pays TensorFlow's import, the rest are a gin parse each.
"""
import pathlib
import re

import gin
import pytest

from jaxprompt.cli import gin_config
from jaxprompt.cli.main import main as cli_main
from jaxprompt.commands import groups
from jaxprompt.commands import train as trainer
from jaxprompt.demo import GIN_MODULES
from jaxprompt.errors import ConfigError, DataError
from jaxprompt.formats import macros, validation
from jaxprompt.models.config import get_config
from tests.helpers import regroup

REPO = pathlib.Path(__file__).resolve().parents[1]
BASE_GIN = ['--gin_file=models/t5x_tiny.gin', '--gin_file=runs/prompt_tuning.gin']
# A wrong-typed value of each kind, in gin syntax (mostly a quoted string where something else belongs).
WRONG = {
    'positive int': "'8'",
    'int': "'0'",
    'count': "'100'",
    'bool': "'yes'",
    'text': '5',
    'path': '5',
    'paths': '[5]',
    'rate': "'0.1'",
    'positive number': "'0.3'",
    'labels': "'positive'",
    'one of': '5',
    'some of': "'cross'",
    'feature lengths': '[512, 16]',
    'length buckets': "'64'",
    'method': "'prefix_tuning'",
    'made by gin': "'sampled_vocab'",
    'task heads': "['sst2']",
}
# The group each macro's field belongs to, with the other fields it needs to be built.
GROUP_BASE = {
    'ModelSource': dict(config=get_config('t5x_tiny')),
    'DataConfig': dict(mixture_or_task_name='t', task_feature_lengths={'inputs': 8, 'targets': 4}),
    'Schedule': dict(train_steps=10),
    'EvalConfig': {},
    'PromptSource': {},
}

pytestmark = pytest.mark.usefixtures('clean_gin')


def one_error(capsys, argv) -> tuple[int, str]:
  """`cli_main(argv)` -> (exit code, its message), asserting stderr is that one line and nothing else."""
  code = cli_main([str(a) for a in argv])
  err = capsys.readouterr().err
  lines = err.splitlines()
  assert len(lines) == 1 and lines[0].startswith('jaxprompt: error: '), err
  return code, lines[0][len('jaxprompt: error: '):]


@pytest.fixture(scope='module')
def group_fields() -> dict[str, tuple[str, str]]:
  """{macro: (group, field)} as the run files bind the groups (`jaxprompt.DataConfig.batch_size = %BATCH_SIZE`)."""
  gin_config.import_configurables()
  gin_config.parse(['models/t5x_tiny.gin', 'runs/prompt_tuning.gin', 'runs/prompt_eval.gin'])
  found = {}
  for group in GROUP_BASE:
    for field, value in gin.get_bindings(f'jaxprompt.{group}', resolve_references=False).items():
      if isinstance(value, gin.config.ConfigurableReference) and value.configurable.selector == 'gin.macro':
        found.setdefault(value.scopes[0], (group, field))
  gin.clear_config()
  return found


def test_every_kind_has_a_wrong_value_and_the_table_uses_known_kinds():
  assert set(WRONG) == set(validation.KINDS)
  assert {m.kind for m in macros.MACROS.values()} <= set(validation.KINDS)


def test_every_documented_macro_is_in_the_table():
  """Every macro a shipped gin file sets or uses, or the docs and help pass with --gin., and nothing else."""
  gin_text = '\n'.join(p.read_text() for p in (REPO / 'gin_configs').rglob('*.gin'))
  in_gin = set(re.findall(r'^([A-Z][A-Z0-9_]+) *=', gin_text, re.M)) | set(re.findall(r'%([A-Z][A-Z0-9_]+)', gin_text))
  docs = [REPO / 'README.md', REPO / 'gin_configs' / 'README.md', *(REPO / 'docs').glob('*.md')]
  flags = set(re.findall(r'--gin\.([A-Z][A-Z0-9_]+)=', '\n'.join(p.read_text() for p in docs)))
  flags -= {'NAME', 'MIXTURE_OR_TASK_MODULE'}  # the placeholder; the t5x reference command's, shown beside ours
  from jaxprompt.cli import parser  # pylint: disable=g-import-not-at-top
  in_help = set(re.findall(r'\b([A-Z][A-Z0-9]*_[A-Z0-9_]+|METHOD|PACK)\b', parser.MACROS))
  assert in_gin | flags | in_help == set(macros.MACROS)


@pytest.mark.parametrize('name', list(macros.MACROS))
def test_a_wrong_typed_macro_is_one_line_exit_2_and_nothing_written(capsys, tiny_gin, tmp_path, group_fields, name):
  macro = macros.MACROS[name]
  model_dir = tmp_path / 'run'
  code, line = one_error(capsys, [
      'train', *BASE_GIN, f'--gin_file={tiny_gin}', f"--gin.MODEL_DIR='{model_dir}'",
      f'--gin.{name}={WRONG[macro.kind]}'
  ])
  assert code == 2 and line.startswith(f'{name} must be {macro.phrase()}, got '), line
  assert not model_dir.exists() and not list(tmp_path.iterdir())
  if name in group_fields:  # the group says the same of the same value
    group, field = group_fields[name]
    with pytest.raises(ConfigError) as error:
      getattr(groups, group)(**dict(GROUP_BASE[group], **{field: gin.config.parse_value(WRONG[macro.kind])}))
    said, _, rule = str(error.value).splitlines()[0].partition(' must be ')  # gin adds the configurable's line
    assert name in said and line.startswith(f'{name} must be {rule}'), (str(error.value), line)


def test_the_fix_is_the_flag_to_write(capsys, tiny_gin, tmp_path):
  args = ['train', *BASE_GIN, f'--gin_file={tiny_gin}', f"--gin.MODEL_DIR='{tmp_path / 'run'}'"]
  _, line = one_error(capsys, [*args, "--gin.METHOD='prefix_tuning'"])
  assert line == ("METHOD must be a method factory such as @jaxprompt.methods.prompt_tuning, got the string "
                  "'prefix_tuning': write --gin.METHOD=@jaxprompt.methods.prefix_tuning")
  _, line = one_error(capsys, [*args, '--gin_bindings', "METHOD = 'p_tuning'"])
  assert line.endswith(': write --gin_bindings="METHOD = @jaxprompt.methods.p_tuning"')
  _, line = one_error(capsys, [*args, '--gin.METHOD=@jaxprompt.methods.prefix_tuning()'])
  assert line.endswith('got @jaxprompt.methods.prefix_tuning(): write --gin.METHOD=@jaxprompt.methods.prefix_tuning')
  _, line = one_error(capsys, [*args, '--gin.METHOD=@jaxprompt.methods.sampled_vocab'])
  assert line.endswith(
      'got @jaxprompt.methods.sampled_vocab (methods: model_tuning, multitask_prompt_tuning, multitask_prompts, '
      'p_tuning, p_tuning_v2, per_layer_prompts, prefix_tuning, prompt_tuning, with_head, with_task_heads)')
  _, line = one_error(capsys, [*args, '--gin.PROMPT_INIT=@jaxprompt.methods.sampled_vocab'])
  assert line.endswith(
      'got @jaxprompt.methods.sampled_vocab: write --gin.PROMPT_INIT="@jaxprompt.methods.sampled_vocab()"')
  _, line = one_error(capsys, [*args, '--gin.PROMPT_INIT=@jaxprompt.model_config()'])
  assert line.endswith('got @jaxprompt.model_config(), which makes a ModelConfig')
  _, line = one_error(capsys, [*args, "--gin.TASK_FEATURE_LENGTHS=\"{'inputs': 8, 'targets': 4}\""])
  assert line.endswith(""": write --gin.TASK_FEATURE_LENGTHS="{'inputs': 8, 'targets': 4}\"""")
  _, line = one_error(capsys, [*args, "--gin.BATCH_SIZE='8'"])
  assert line == "BATCH_SIZE must be a positive integer, got the string '8': write --gin.BATCH_SIZE=8"
  assert not list(tmp_path.iterdir())


def test_a_mistyped_gin_file_gets_the_close_names(capsys, tmp_path):
  listing = ('(methods: model_tuning, multitask_prompt_tuning, multitask_prompts, p_tuning, p_tuning_v2, '
             'per_layer_prompts, prefix_tuning, prompt_tuning)')
  for given in ('methods/prefix_tunning.gin', 'method/prefix_tuning.gin'):
    code, line = one_error(capsys, ['train', f'--gin_file={given}'])
    assert code == 2 and line.startswith(f'gin file {given} not found; did you mean methods/prefix_tuning.gin')
    assert line.endswith(listing)
  (tmp_path / 'mine.gin').write_text('X = 1\n')
  _, line = one_error(capsys, ['train', f'--gin_file={tmp_path / "mien.gin"}'])
  mine, mien = tmp_path / 'mine.gin', tmp_path / 'mien.gin'
  assert line == f'gin file {mien} does not exist; did you mean {mine}? ({tmp_path}: mine)'
  (tmp_path / 'outer.gin').write_text("include 'methods/prefix_tunning.gin'\n")
  _, line = one_error(capsys, ['train', f'--gin_file={tmp_path / "outer.gin"}'])
  assert 'Unable to open file: methods/prefix_tunning.gin' in line and line.endswith(
      f'did you mean methods/prefix_tuning.gin or methods/p_tuning.gin or methods/prompt_tuning.gin? {listing}')


@pytest.mark.parametrize('flag, message', [
    ('--gin.jaxprompt.trian.model_dir=1', "No configurable matching 'jaxprompt.trian'; did you mean jaxprompt.train "),
    ('--gin.jaxprompt.train.modl_dir=1', "doesn't have a parameter named 'modl_dir'; did you mean model_dir or model?"),
    ('--gin.jaxprompt.train.zzz=1', "named 'zzz'; its parameters: model_dir, model, data, schedule, evaluation, "),
    ('--gin.METHOD=@jaxprompt.methods.prefix_tunning',
     "No configurable matching reference '@jaxprompt.methods.prefix_tunning'; did you mean "
     '@jaxprompt.methods.prefix_tuning or'),
    ('--gin.PROMPT_LENGHT=5', 'no gin binding uses the macro PROMPT_LENGHT, so it would change nothing; did you mean '
     'PROMPT_LENGTH'),
])
def test_a_mistyped_name_in_a_binding_gets_the_close_names(capsys, tiny_gin, flag, message):
  code, line = one_error(capsys, ['train', *BASE_GIN, f'--gin_file={tiny_gin}', flag])
  assert code == 2 and line.startswith(f'{flag}: ') and message in line, line


def test_a_macro_a_flag_sets_for_the_users_own_gin_file_is_no_typo(tmp_path):
  (tmp_path / 'mine.gin').write_text('jaxprompt.Schedule.log_period = %MY_PERIOD\n')
  gin_config.import_configurables()
  gin_config.parse(['models/t5x_tiny.gin', 'runs/prompt_tuning.gin', 'mine.gin'], ['MY_PERIOD = 7'], str(tmp_path))
  assert gin.query_parameter('jaxprompt.Schedule.log_period').scopes == ['MY_PERIOD']


def test_every_shipped_gin_file_passes_the_table():
  gin_config.import_configurables(GIN_MODULES)
  runs = ['runs/prompt_tuning.gin']
  combinations = [[f'models/{p.name}', *runs] for p in (REPO / 'gin_configs' / 'models').glob('*.gin')]
  combinations += [['models/t5_1_1_xl.gin', 'models/layouts/large.gin', *runs]]
  combinations += [['models/t5x_tiny.gin', f'runs/{r}.gin'] for r in ('prompt_eval', 'prompt_infer')]
  combinations += [['models/demo.gin', f'runs/{r}.gin'] for r in ('demo', 'demo_model_tuning', 'demo_pretrain')]
  combinations += [['runs/demo_encoder_pretrain.gin']]  # the encoder's pretraining binds its model in Python
  combinations += [
      ['models/bert_base_uncased.gin', *runs, f'heads/{p.name}'] for p in (REPO / 'gin_configs' / 'heads').glob('*.gin')
  ]
  combinations += [['models/t5x_tiny.gin', *runs, f'{d}/{p.name}']
                   for d in ('methods', 'prompts')
                   for p in (REPO / 'gin_configs' / d).glob('*.gin')]
  for files in combinations:
    gin_config.parse(files)  # raises on any macro the table rejects


def test_the_python_api_checks_before_model_dir_exists(train_kwargs, tmp_path):
  with pytest.raises(ConfigError, match="METHOD must be a method factory .*, got the string 'prefix_tuning'"):
    trainer.train(str(tmp_path / 'run'), **dict(train_kwargs, method='prefix_tuning'))
  with pytest.raises(DataError, match="unknown task or mixture 'no_such_task'"):
    trainer.train(str(tmp_path / 'run'), **regroup(train_kwargs, data=dict(mixture_or_task_name='no_such_task')))
  assert not list(tmp_path.iterdir())


def test_docs_list_the_table():
  text = (REPO / 'docs' / 'workflow.md').read_text()
  assert macros.markdown() in text, 'regenerate: python -c "from jaxprompt.formats import macros; ' \
      'print(macros.markdown())"'


def test_the_tables_choices_are_their_owners():
  from jaxprompt.commands import configs  # pylint: disable=g-import-not-at-top
  from jaxprompt.methods import multitask  # pylint: disable=g-import-not-at-top
  from jaxprompt.models.hooks import ATTENTION_KINDS  # pylint: disable=g-import-not-at-top
  assert set(macros.DTYPES) == set(configs._DTYPES)  # pylint: disable=protected-access
  assert macros.MULTITASK_MODES == multitask.MODES
  assert set(macros.PREFIX_KINDS) == set(ATTENTION_KINDS)
  from jaxprompt.models.heads import KINDS  # pylint: disable=g-import-not-at-top
  assert macros.HEAD_KINDS == KINDS
