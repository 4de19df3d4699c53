"""The reward-model verbs, one module each: `wmpo train-reward` (train_reward), `eval-reward`
(eval_reward), `calibrate-reward` (calibrate_reward) and `diagnose-imagination`
(diagnose_imagination). What they share is in ``common``."""
