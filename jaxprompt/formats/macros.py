"""The gin macros jaxprompt's gin files and docs name, as data: what each must be, what it means, where its
default is set. The one source of a macro's expected type:

- the command line checks every bound macro against it right after parsing gin, before any command runs
  (`jaxprompt/cli/macro_check.py`: one line naming the macro, what it expects, what it got, and the fix);
- the entry points' groups check their fields with `check` (`commands/groups.py`, `train/schedule.Schedule`);
- docs/workflow.md lists it (tests/test_macros.py keeps the two equal).

A kind is a key of `formats.validation.KINDS`. `none` says what None means where None is allowed; a macro bound
to a gin call (`@name()`) is checked when the call's value reaches its group.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from jaxprompt.errors import ConfigError
from jaxprompt.formats import validation


@dataclasses.dataclass(frozen=True)
class Macro:
  """One macro: its `kind`, a good value in gin syntax (`example`), what it `means`, the file that `sets` its
  default, what None means (`none`; '' when None is not allowed), the `choices` of a 'one of' / 'some of' kind,
  `expects`, the phrase of a kind too wide to say it ('method', 'made by gin'), and for 'made by gin' the type
  a configurable called for it must say it returns (`makes`; one saying nothing is let through)."""
  kind: str
  example: str
  means: str
  sets: str
  none: str = ''
  choices: tuple[str, ...] = ()
  expects: str = ''
  makes: str = ''

  def phrase(self) -> str:
    return self.expects or validation.expects(self.kind, self.choices)


DTYPES = ('float32', 'bfloat16', 'float16')
MULTITASK_MODES = ('concat', 'add', 'concat_features', 'project')
PREFIX_KINDS = ('encoder_self', 'decoder_self', 'cross')
HEAD_KINDS = ('classification', 'regression', 'multiple_choice', 'tagging')  # models.heads.KINDS

# yapf: disable
MACROS: dict[str, Macro] = {
    # The run.
    'MODEL_DIR': Macro('path', "'/tmp/run'", 'the run folder: checkpoints, metrics, TensorBoard, final_* files',
                       'required (train)'),
    'MIXTURE_OR_TASK_NAME': Macro('text', "'taskless_glue_sst2_v200'", 'the seqio task or mixture (or '
                                  '@jaxprompt.data.file_task_name())', 'required', none='infer on text inputs'),
    'TASK_FEATURE_LENGTHS': Macro('feature lengths', "{'inputs': 512, 'targets': 16}",
                                  'the longest inputs and targets in tokens (longer examples are cut, and '
                                  "counted); unset with --task: from the task's data", 'runs/*.gin'),
    'BATCH_SIZE': Macro('positive int', '32', 'the global batch (split over hosts)', 'runs/*.gin'),
    'TRAIN_STEPS': Macro('positive int', '30000', 'optimizer steps in all, counting a resumed run\'s',
                         'runs/prompt_tuning.gin'),
    'EVAL_PERIOD': Macro('positive int', '1000', 'steps between evaluations', 'runs/prompt_tuning.gin'),
    'CHECKPOINT_PERIOD': Macro('positive int', '1000', 'steps between checkpoints', 'runs/prompt_tuning.gin'),
    'EVAL_SPLIT': Macro('text', "'validation'", 'the split evaluation scores', 'runs/prompt_{tuning,eval}.gin',
                        none='no evaluation while training'),
    'EVAL_MAX_EXAMPLES': Macro('positive int', '500', 'examples of the split each evaluation reads', 'runs/demo*.gin',
                               none='the whole split'),
    'INFER_SPLIT': Macro('text', "'validation'", 'the split infer decodes without --input_file',
                         'runs/prompt_infer.gin', none="the command's own"),
    'LENGTH_BUCKETS': Macro('length buckets', '64', 'batches cut to the smallest bucket holding their longest row',
                            'runs/prompt_{tuning,eval,infer}.gin', none='fixed-length batches'),
    'PACK': Macro('bool', 'True', 'several training examples per row, each with its own prompt copy',
                  'runs/prompt_tuning.gin'),
    'LEARNING_RATE': Macro('positive number', '0.3', "the optimizer's (constant) learning rate",
                           'runs/prompt_tuning.gin, methods/*.gin'),
    'WARMUP_STEPS': Macro('count', '100', "the cosine schedule's warm-up", 'runs/demo_pretrain.gin'),
    'RANDOM_SEED': Macro('int', '0', "the method's initialisation, the rng, the data order",
                         'runs/prompt_tuning.gin'),
    # The frozen model.
    'MODEL_CONFIG': Macro('made by gin', '@jaxprompt.model_config()', "the network's config (any family's)",
                          'models/*.gin', expects='a model config such as @jaxprompt.model_config()',
                          makes='ModelConfig'),
    'INITIAL_CHECKPOINT_PATH': Macro('path', "'gs://t5-data/pretrained_models/t5x/t5_1_1_small/checkpoint_1000000'",
                                     'the frozen weights: a T5X checkpoint or a Hugging Face safetensors folder',
                                     'models/*.gin', none='train_model from scratch'),
    'VOCABULARY': Macro('path', '@jaxprompt.vocabulary()', 'the model\'s vocabulary (file tasks, infer text; a causal '
                        'LM reads every task with it)', 'models/*.gin', none="T5's", expects='a vocabulary such as '
                        '@jaxprompt.vocabulary() or a SentencePiece model path'),
    'HF_MODEL_DIR': Macro('path', "'/models/Llama-3.2-1B'", "a causal LM's or BERT / RoBERTa's local Hugging Face "
                          'folder: its weights and tokenizer (and config.json for models/hf_{causal,encoder}.gin)',
                          'models/*.gin of causal LMs and encoders (a placeholder)'),
    'VOCABULARY_PATH': Macro('path', "'/path/spm.model'", 'the SentencePiece model of the fixture model',
                             'models/t5x_tiny.gin', none="T5's"),
    'T5X_TINY_CHECKPOINT': Macro('path', "'/abs/path/t5x_tiny/classic_checkpoint_0'", "the fixture model's weights",
                                 'models/t5x_tiny.gin'),
    'DEMO_MODEL_DIR': Macro('path', "'/path/to/model'", 'a demo model dir', 'models/demo.gin, models/demo_causal.gin',
                            none='the shipped demo model'),
    'ACTIVATION_DTYPE': Macro('one of', "'float32'", 'the activation dtype', 'models/*.gin', none="the config's",
                              choices=DTYPES),
    'DROPOUT_RATE': Macro('rate', '0.1', "the network's dropout", 'models/*.gin, runs/prompt_tuning.gin',
                          none="the config's"),
    'MODEL_PARALLEL': Macro('positive int', '1', 'devices per model replica (the mesh\'s model axis)',
                            'models/*.gin'),
    # The method.
    'METHOD': Macro('method', '@jaxprompt.methods.prompt_tuning', 'the tuning method', 'methods/*.gin',
                    expects='a method factory such as @jaxprompt.methods.prompt_tuning'),
    'PROMPT_LENGTH': Macro('positive int', '100', 'prompt rows', 'methods/*.gin', none="the prompt file's (eval, "
                           'infer)'),
    'PROMPT_INIT': Macro('made by gin', '@jaxprompt.methods.sampled_vocab()', "the prompt's initialiser",
                         'prompts/*.gin', none="the method's default",
                         expects='a prompt initialiser such as @jaxprompt.methods.sampled_vocab()',
                         makes='Initializer'),
    'CLASS_LABELS': Macro('labels', "['negative', 'positive']", 'labels of the class-label initialisation',
                          'prompts/class_labels.gin (the task\'s labels)'),
    'PROMPT_TEXT': Macro('text', "'Classify the sentiment:'", 'text of the from-text initialisation',
                         'prompts/from_text.gin (required)'),
    'PROMPT_INIT_FILE': Macro('paths', "'/path/prompt.npy'", 'a saved prompt to start from (a list: their mean, '
                              'SPoT)', 'prompts/from_file.gin (required)'),
    'PROMPT_FILE': Macro('path', "'/path/final_prompt.npy'", 'the method file eval / infer use (--prompt_file)',
                         'runs/prompt_{eval,infer}.gin', none='--prompt_file, --checkpoint or --prompt'),
    'PREFIX_LENGTH': Macro('positive int', '100', 'K/V prefix rows per layer', 'methods/{prefix_tuning,p_tuning_v2}'
                           '.gin'),
    'PREFIX_KINDS': Macro('some of', "('encoder_self', 'decoder_self', 'cross')", 'the attentions a prefix joins',
                          'methods/{prefix_tuning,p_tuning_v2}.gin', none="the model's (P-tuning v2: its "
                          'self-attentions)', choices=PREFIX_KINDS),
    'PREFIX_HIDDEN': Macro('positive int', '512', "the prefix MLP's hidden width", 'methods/prefix_tuning.gin'),
    'PREFIX_DROPOUT': Macro('rate', '0.0', 'dropout on the computed K/V rows', 'methods/prefix_tuning.gin'),
    'MULTITASK_MODE': Macro('one of', "'concat'", "how the shared and each task's prompt combine",
                            'methods/multitask_prompts.gin', choices=MULTITASK_MODES),
    'TASK_PROMPT_LENGTH': Macro('positive int', '50', "each task's own rows ('concat')",
                                'methods/multitask_prompts.gin', none="modes other than 'concat'"),
    'TASK_PROMPT_INIT': Macro('made by gin', '@jaxprompt.methods.sampled_vocab()', "the task prompts' initialiser",
                              'methods/multitask_prompts.gin', none='U[0, 0.01)',
                              expects='a prompt initialiser such as @jaxprompt.methods.sampled_vocab()',
                         makes='Initializer'),
    'MPT_RANK': Macro('positive int', '1', "rank of each task's factor", 'methods/multitask_prompt_tuning.gin'),
    # An encoder-only model's task head (heads/*.gin).
    'HEAD_KIND': Macro('one of', "'classification'", 'the task head trained beside the method', 'heads/*.gin',
                       choices=HEAD_KINDS),
    'NUM_LABELS': Macro('positive int', '2', "the head's classes or tags", 'heads/head.gin', none="the task's"),
    'USE_POOLER': Macro('bool', 'False', "the head reads BERT's pooler output, not the first token's state",
                        'heads/head.gin'),
    'HEAD_DROPOUT': Macro('rate', '0.1', "dropout on the head's input", 'heads/head.gin'),
    'TASK_HEADS': Macro('task heads', "{'sst2': {'use_pooler': True}}", "a multi-task run's head fields per task",
                        'heads/multitask.gin', none="each task's own kind and label count"),
}
# yapf: enable


def error(name: str, value: Any) -> ConfigError:
  """'<NAME> must be <what the table says>, got <value>'."""
  return ConfigError(f'{name} must be {MACROS[name].phrase()}, got {validation.describe(value)}')


def check(**values: Any) -> None:
  """Each macro's value against the table (None passes: whether a command needs it is the command's to say)."""
  for name, value in values.items():
    macro = MACROS[name]
    if value is not None:
      validation.check_kind(macro.kind, name, value, macro.choices, macro.expects or None)


def markdown() -> str:
  """The table as docs/workflow.md shows it (tests/test_cli_macros.py keeps the two equal)."""
  lines = ['| macro | must be | e.g. | means | None means | default in |', '|---|---|---|---|---|---|']
  for name, m in MACROS.items():
    lines.append(f'| `{name}` | {m.phrase()} | `{m.example}` | {m.means} | {m.none or "(not allowed)"} | {m.sets} |')
  return '\n'.join(lines)


def bound(name: str, default: Any = None) -> Any:
  """The value gin has bound to macro `name`, as parsed (`@fn()` references unevaluated), or `default` when
  it is unbound."""
  import gin  # pylint: disable=g-import-not-at-top
  try:
    return gin.query_parameter(f'%{name}')
  except ValueError:
    return default
