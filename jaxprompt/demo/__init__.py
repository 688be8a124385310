"""The demo: a small T5 pretrained by jaxprompt itself (shipped in jaxprompt/assets/demo_model) and
`jaxprompt demo`, prompt tuning it on a held-out formulation on a CPU in minutes.

  data       the generated text-to-text skills and held-out formulations
  tasks      their tasks (text tasks; import registers them) and the pretraining mixture
  model      DEMO_CONFIG, the shipped model's paths, gin hooks (`jaxprompt.demo.demo_model_config()` ...)
  causal_model  the causal demo model (a tiny Llama, a Hugging Face folder in jaxprompt/assets/demo_causal_model)
  encoder_model  the encoder demo model (a tiny BERT, a BertForMaskedLM folder in jaxprompt/assets/demo_encoder_model)
  vocabularies   the demo models' vocabularies (SentencePiece; the encoder's WordPiece)
  mlm_pretrain   the encoder's masked-LM pretraining
  encoder_tasks  held-out classification (TSV) and tagging (CoNLL) files for the encoder model
  families   what pretraining and the demo do differently for each family (t5, causal, encoder)
  pretrain   `python -m jaxprompt.demo.pretrain --output DIR --seed 0 [--family causal|encoder]`
  run        `jaxprompt demo [--family causal]` (`run.main(argv)`)
"""

# What the demo's gin files bind beyond jaxprompt's own configurables (`jaxprompt.cli.gin_config`): the demo
# model's gin hooks and the demo tasks. Names, not imports: importing the package stays free.
GIN_MODULES = ('jaxprompt.demo.model', 'jaxprompt.demo.causal_model', 'jaxprompt.demo.mlm_pretrain',
               'jaxprompt.demo.tasks')
