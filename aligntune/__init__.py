"""aligntune: config-driven alignment of language models (GRPO, DPO, PPO).

Importing this package is cheap (no torch): the CLI's --help and config errors depend on it.
"""

__version__ = "0.1.0"
