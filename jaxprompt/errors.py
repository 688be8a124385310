"""Error types. Each names the culprit (a path, a parameter, a task) in its message."""


class JaxPromptError(Exception):
  """Base class: an input jaxprompt cannot use. The CLI prints it as one line."""


class CheckpointError(JaxPromptError):
  """A checkpoint path is missing, not a checkpoint, damaged, or does not fit the model."""


class ConfigError(JaxPromptError):
  """A configuration (model config, gin binding, mesh) is inconsistent."""


class DataError(JaxPromptError):
  """A task, split, file or example cannot be used."""


class PromptError(JaxPromptError):
  """A prompt file or prompt configuration cannot be used."""


class TrainingError(JaxPromptError):
  """Training cannot continue (for example a non-finite loss)."""


class UsageError(JaxPromptError):
  """A command-line mistake: a flag, a gin file that is not there, a gin value gin cannot parse (exit 2)."""
