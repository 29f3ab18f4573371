"""`taskdiv evaluate` (`commands`): held-out accuracy (`heldout`), MMLU and BBH through
lm-evaluation-harness (`harness`), an LLM judge's win rate (`judge`) on long-form answers
(`answers`).
"""
