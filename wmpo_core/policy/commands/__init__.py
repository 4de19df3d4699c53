"""The policy verbs, one module each: `wmpo eval` (eval), `train-policy` (train_policy),
`predict` (predict) and `import-openvla` (import_openvla)."""
