"""The demo: a small T5 pretrained by jaxprompt itself (shipped in jaxprompt/assets/demo_model) and
`jaxprompt demo`, prompt tuning it on a held-out formulation on a CPU in minutes.

  data       the generated text-to-text skills and held-out formulations
  tasks      their tasks (text tasks; import registers them) and the pretraining mixture
  model      DEMO_CONFIG, the shipped model's paths, gin hooks (`jaxprompt.demo.demo_model_config()` ...)
  causal_model  the causal demo model (a tiny Llama, a Hugging Face folder in jaxprompt/assets/demo_causal_model)
  families   what pretraining and the demo do differently for the two (t5, causal)
  pretrain   `python -m jaxprompt.demo.pretrain --output DIR --seed 0 [--family causal]`
  run        `jaxprompt demo [--family causal]` (`run.main(argv)`)
"""

# What the demo's gin files bind beyond jaxprompt's own configurables (`jaxprompt.cli.gin_config`): the demo
# model's gin hooks and the demo tasks. Names, not imports: importing the package stays free.
GIN_MODULES = ('jaxprompt.demo.model', 'jaxprompt.demo.causal_model', 'jaxprompt.demo.tasks')
