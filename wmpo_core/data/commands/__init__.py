"""The episode-data verbs, one module each: `wmpo episodes` (episodes), `label` (label),
`import-bag` (import_bag), `export-lerobot` (export_lerobot), `import-lerobot` (import_lerobot)
and `collect-sim` (collect_sim)."""
