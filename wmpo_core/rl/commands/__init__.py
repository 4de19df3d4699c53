"""The policy-improvement verbs, one module each: `wmpo grpo` (grpo), `grpo-sim` (grpo_sim),
`dpo` (dpo) and `compare` (compare). What they share is in ``common``.

Every trainer writes ``<out>/policy``, a package whose parent is the base policy; pass
``--sign KEY`` to sign it (or sign it later with `wmpo export`).
"""
