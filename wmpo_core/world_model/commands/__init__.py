"""The world-model verbs, one module each: `wmpo train-vae` (train_vae), `train-world-model`
(train_world_model), `eval-world-model` (eval_world_model), `imagine` (imagine) and
`ablate-world-model` (ablate_world_model). What they share is in ``common``."""
