"""The entry points' groups (`jaxprompt.commands.groups`): each field checked where the group is built, the run files
binding them from the same macros as before, command-line flags setting single fields, no test switch in a
public signature."""
import inspect

import gin
import pytest

from jaxprompt.cli import console, gin_config
from jaxprompt.cli.main import main as cli_main
from jaxprompt.commands import bank_files, configs
from jaxprompt.commands import evaluate as evaluate_lib
from jaxprompt.commands import train as trainer
from jaxprompt.commands.groups import (
    CheckpointConfig,
    DataConfig,
    EvalConfig,
    ModelSource,
    PromptSource,
    Schedule,
)
from jaxprompt.data.buckets import LengthBuckets
from jaxprompt.demo import GIN_MODULES
from jaxprompt.errors import ConfigError
from jaxprompt.models.config import get_config
from jaxprompt.train import loop

LENGTHS = {'inputs': 8, 'targets': 4}
TINY = get_config('t5x_tiny')


@pytest.fixture(autouse=True)
def _clean_gin():
  yield
  gin.clear_config()


@pytest.mark.parametrize('build, message', [
    (lambda: ModelSource('t5x_tiny'),
     "MODEL_CONFIG must be a model config such as @jaxprompt.model_config(), got the string 't5x_tiny'"),
    (lambda: ModelSource(), 'MODEL_CONFIG is not set: pass --gin.MODEL_CONFIG='),
    (lambda: ModelSource(TINY, 7), 'INITIAL_CHECKPOINT_PATH must be a path (a quoted string), got 7'),
    (lambda: ModelSource(TINY, model_parallel='2'), "MODEL_PARALLEL must be a positive integer, got the string '2'"),
    (lambda: DataConfig(3, LENGTHS), 'MIXTURE_OR_TASK_NAME must be a non-empty string, got 3'),
    (lambda: DataConfig('t', None), 'TASK_FEATURE_LENGTHS is not set'),
    (lambda: DataConfig('t', {'inputs': 8}), "TASK_FEATURE_LENGTHS must be {'inputs': int, 'targets': int}"),
    (lambda: DataConfig('t', LENGTHS, batch_size='8'), "BATCH_SIZE must be a positive integer, got the string '8'"),
    (lambda: DataConfig('t', LENGTHS, batch_size=0), 'BATCH_SIZE must be a positive integer, got 0'),
    (lambda: DataConfig('t', LENGTHS, pack='yes'), "PACK must be True or False, got the string 'yes'"),
    (lambda: DataConfig('t', LENGTHS, length_buckets=-4), 'LENGTH_BUCKETS step must be positive, got -4'),
    (lambda: DataConfig('t', LENGTHS, split=''), 'the split (--split, EVAL_SPLIT, INFER_SPLIT) must be a non-empty'),
    (lambda: Schedule(), 'TRAIN_STEPS is not set'),
    (lambda: Schedule(10, eval_period=0), 'EVAL_PERIOD must be a positive integer, got 0'),
    (lambda: Schedule(10, checkpoint_period=2.5), 'CHECKPOINT_PERIOD must be a positive integer, got 2.5'),
    (lambda: EvalConfig(split=1), 'EVAL_SPLIT must be a non-empty string, got 1'),
    (lambda: EvalConfig(max_examples=-1), 'EVAL_MAX_EXAMPLES must be a positive integer, got -1'),
    (lambda: CheckpointConfig(keep=0), 'jaxprompt.CheckpointConfig.keep must be a positive integer, got 0'),
    (lambda: CheckpointConfig(best_mode='up'), "jaxprompt.CheckpointConfig.best_mode must be 'max' or 'min'"),
    (lambda: PromptSource(checkpoint_step=-1), '--step (jaxprompt.PromptSource.checkpoint_step) must be a step'),
    (lambda: PromptSource(prompt_length=0), 'PROMPT_LENGTH must be a positive integer, got 0'),
    (lambda: PromptSource(prompt_file=3), 'PROMPT_FILE must be a path (a quoted string), got 3'),
    (lambda: PromptSource(prompts={'a': None}), "--prompt NAME=FILE (jaxprompt.PromptSource.prompts) names no file"),
    (lambda: PromptSource(combine='middle'), "jaxprompt.PromptSource.combine must be one of prefix, "),
    (lambda: PromptSource(allow_other_model=1), '--allow_other_model (jaxprompt.PromptSource.allow_other_model)'),
])
def test_each_group_names_the_macro_of_a_bad_field(build, message):
  with pytest.raises(ConfigError) as error:
    build()
  assert message in str(error.value)
  assert console.one_line(str(error.value)) == str(error.value).splitlines()[0]  # the CLI's line: gin's context off


def test_groups_normalise_what_they_hold(tmp_path):
  data = DataConfig(type('Task', (), {'name': 'my_task'})(), {'inputs': 8, 'targets': 4}, length_buckets=[4, 8])
  assert data.mixture_or_task_name == 'my_task' and data.length_buckets == LengthBuckets((4, 8), (4, 8))
  assert ModelSource(TINY, tmp_path).checkpoint == str(tmp_path)
  with pytest.raises(ConfigError, match='INITIAL_CHECKPOINT_PATH is not set'):
    ModelSource(TINY).require_checkpoint()
  with pytest.raises(ConfigError, match='MIXTURE_OR_TASK_NAME is not set'):
    DataConfig(None, LENGTHS).require_task()
  with pytest.raises(AttributeError):
    data.batch_size = 8  # frozen


def test_no_test_switch_in_a_public_signature(monkeypatch):
  for entry in (trainer.train, trainer.train_model, trainer.run_training, loop.run):
    assert not [p for p in inspect.signature(entry).parameters if p.startswith('debug')], entry.__name__
  assert trainer.injected_faults() is None
  monkeypatch.setenv(trainer.FAULTS_ENV, '{"nan_loss_at_step": 5}')
  assert trainer.injected_faults() == loop.Faults(nan_loss_at_step=5)
  monkeypatch.setenv(trainer.FAULTS_ENV, '{"nan_loss": 5}')
  with pytest.raises(ConfigError, match=r"JAXPROMPT_TEST_FAULTS='.*' must be a JSON object of \['nan_loss_at_step'"):
    trainer.injected_faults()


class _Stop(Exception):
  """Raised by a stand-in for what an entry point calls next, once it has seen its arguments."""


def _record(seen: dict, key: str, stop: bool = True):
  """A stand-in that keeps its first argument as `seen[key]` and its keyword arguments by name, then stops the
  caller."""

  def record(first, **kwargs):
    seen.update(kwargs, **{key: first})
    if stop:
      raise _Stop

  return record


def _parse(files, bindings=()):
  gin_config.import_configurables(GIN_MODULES)
  gin_config.parse(files, bindings)


def test_prompt_tuning_gin_binds_the_groups_from_the_macros(monkeypatch):
  seen = {}
  monkeypatch.setattr(trainer, 'run_training', _record(seen, 'model_dir'))
  _parse(['models/t5x_tiny.gin', 'runs/prompt_tuning.gin'],
         ["MODEL_DIR = '/tmp/run'", "MIXTURE_OR_TASK_NAME = 'my_task'", 'BATCH_SIZE = 8', 'PACK = True'])
  with pytest.raises(_Stop):
    trainer.train()  # pylint: disable=no-value-for-parameter
  assert seen['model_dir'] == '/tmp/run' and seen['seed'] == 0
  config = configs.model_config()  # pylint: disable=no-value-for-parameter  (MODEL_CONFIG, as gin builds it)
  assert seen['model'] == ModelSource(config, '../shared/fixtures/t5x_tiny/classic_checkpoint_0', model_parallel=1)
  assert seen['model'].config.dropout_rate == 0.1  # DROPOUT_RATE of runs/prompt_tuning.gin
  assert seen['data'] == DataConfig('my_task', {'inputs': 512, 'targets': 16}, 'train', batch_size=8, pack=True)
  assert seen['schedule'] == Schedule(30000, eval_period=1000, checkpoint_period=1000, log_period=100)
  assert seen['evaluation'] == EvalConfig('validation')
  assert seen['checkpoints'] == CheckpointConfig(keep=3)


def test_demo_model_tuning_gin_binds_train_models_groups(monkeypatch):
  seen = {}
  monkeypatch.setattr(trainer, 'run_training', _record(seen, 'model_dir'))
  _parse(['models/demo.gin', 'runs/demo_model_tuning.gin'], ["MODEL_DIR = '/tmp/run'", 'EVAL_MAX_EXAMPLES = 50'])
  with pytest.raises(_Stop):
    trainer.train_model()  # pylint: disable=no-value-for-parameter
  assert seen['data'] == DataConfig('demo_heldout_topic', {'inputs': 24, 'targets': 4}, 'train', length_buckets=8)
  assert seen['schedule'] == Schedule(100, eval_period=10, log_period=25)
  assert seen['evaluation'] == EvalConfig('validation', max_examples=50)
  assert seen['checkpoints'] == CheckpointConfig(keep=1) and not seen['checkpoint_required']


def test_a_flag_sets_one_field_and_gin_the_others(monkeypatch, tiny_gin):
  """`eval --checkpoint --step --split` set those fields; PROMPT_LENGTH, BATCH_SIZE ... stay gin's."""
  seen = {}
  monkeypatch.setattr(evaluate_lib, 'check_eval_data', _record(seen, 'data', stop=False))
  monkeypatch.setattr(bank_files, 'load_method', _record(seen, 'source'))
  run = ['eval', '--gin_file=models/t5x_tiny.gin', '--gin_file=runs/prompt_eval.gin', f'--gin_file={tiny_gin}']
  with pytest.raises(_Stop):
    cli_main(run + [
        '--checkpoint=/runs/x', '--step=3', '--split=train', '--gin.BATCH_SIZE=2',
        "--gin.jaxprompt.PromptSource.combine='suffix_after_eos'"
    ])
  assert seen['data'] == DataConfig('jp_test_tiny_gin', {'inputs': 16, 'targets': 8}, 'train', batch_size=2)
  assert seen['source'] == PromptSource(checkpoint='/runs/x', checkpoint_step=3, prompt_length=5,
                                        combine='suffix_after_eos')
  with pytest.raises(_Stop):  # the flag wins over the macro
    cli_main(run + ["--gin.PROMPT_FILE='/a.npy'", '--prompt_file=/b.npy', '--allow_other_model'])
  assert seen['data'].split == 'validation' and seen['data'].batch_size == 4  # EVAL_SPLIT; tiny_gin's BATCH_SIZE
  assert seen['source'] == PromptSource('/b.npy', prompt_length=5, allow_other_model=True)


@pytest.mark.parametrize('field, macro', [('eval_period', 'EVAL_PERIOD'), ('checkpoint_period', 'CHECKPOINT_PERIOD')])
def test_a_period_of_none_is_refused_by_its_macro(field, macro):
  """None is no step count: the schedule says which macro to set (the loop never sees it)."""
  with pytest.raises(ConfigError, match=f'^{macro} is not set'):
    Schedule(**{'train_steps': 10, field: None})
