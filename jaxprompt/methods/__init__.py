"""Tuning methods, each one module owning its parameters and the hooks it plugs into the network, and the prompt
initialisers (gin-configurable under `jaxprompt.methods`)."""
import importlib
import pkgutil

from jaxprompt.methods.base import Method
from jaxprompt.methods.initializers import (
    Initializer,
    bind_embedding,
    class_labels,
    from_array,
    from_file,
    from_sample_of_embeddings,
    from_samples_of_embeddings,
    from_text,
    normal,
    random_uniform,
    sampled_vocab,
)

# A method's gin factory shares its module's name, so only the classes come up here: a name in this package never
# hides a module (`jaxprompt.methods.prompt_tuning` is the module however it is imported; the factory is
# `jaxprompt.methods.prompt_tuning.prompt_tuning`). Importing a module registers its factories with gin under
# module `jaxprompt.methods` (`METHOD = @jaxprompt.methods.prompt_tuning`), which these imports see to.
from jaxprompt.methods.model_tuning import ModelTuning
from jaxprompt.methods.p_tuning import PTuning
from jaxprompt.methods.per_layer_prompts import PerLayerPrompts
from jaxprompt.methods.prefix_tuning import PrefixTuning, p_tuning_v2
from jaxprompt.methods.prompt_tuning import PromptTuning

# A method module registers its gin factory and its inference file (`jaxprompt.methods.registry`) on import:
# importing the package imports every module in it, so a new method is one module here and one gin file.
for _module in pkgutil.iter_modules(__path__):
  importlib.import_module(f'{__name__}.{_module.name}')
del _module

__all__ = [
    'Initializer',
    'Method',
    'ModelTuning',
    'PTuning',
    'PerLayerPrompts',
    'PrefixTuning',
    'PromptTuning',
    'bind_embedding',
    'class_labels',
    'from_array',
    'from_file',
    'from_sample_of_embeddings',
    'from_samples_of_embeddings',
    'from_text',
    'normal',
    'p_tuning_v2',
    'random_uniform',
    'sampled_vocab',
]
