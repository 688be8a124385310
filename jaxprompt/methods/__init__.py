"""Soft prompts: the `Prompt` module and its initialisers (gin-configurable under `jaxprompt.methods`)."""
from jaxprompt.methods.initializers import bind_embedding
from jaxprompt.methods.initializers import class_labels
from jaxprompt.methods.initializers import from_array
from jaxprompt.methods.initializers import from_file
from jaxprompt.methods.initializers import from_sample_of_embeddings
from jaxprompt.methods.initializers import from_samples_of_embeddings
from jaxprompt.methods.initializers import from_text
from jaxprompt.methods.initializers import Initializer
from jaxprompt.methods.initializers import normal
from jaxprompt.methods.initializers import random_uniform
from jaxprompt.methods.initializers import sampled_vocab
from jaxprompt.methods.prompt_tuning import Prompt

__all__ = [
    'Initializer', 'Prompt', 'bind_embedding', 'class_labels', 'from_array', 'from_file',
    'from_sample_of_embeddings', 'from_samples_of_embeddings', 'from_text', 'normal', 'random_uniform',
    'sampled_vocab',
]
