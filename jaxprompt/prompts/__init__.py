"""Soft prompts: the `Prompt` module and its initialisers (gin-configurable under `jaxprompt.prompts`)."""
from jaxprompt.prompts.initializers import bind_embedding
from jaxprompt.prompts.initializers import class_labels
from jaxprompt.prompts.initializers import from_array
from jaxprompt.prompts.initializers import from_file
from jaxprompt.prompts.initializers import from_sample_of_embeddings
from jaxprompt.prompts.initializers import from_samples_of_embeddings
from jaxprompt.prompts.initializers import from_text
from jaxprompt.prompts.initializers import Initializer
from jaxprompt.prompts.initializers import normal
from jaxprompt.prompts.initializers import random_uniform
from jaxprompt.prompts.initializers import sampled_vocab
from jaxprompt.prompts.module import Prompt

__all__ = [
    'Initializer', 'Prompt', 'bind_embedding', 'class_labels', 'from_array', 'from_file',
    'from_sample_of_embeddings', 'from_samples_of_embeddings', 'from_text', 'normal', 'random_uniform',
    'sampled_vocab',
]
