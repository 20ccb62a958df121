"""``forge grpo``: GRPO on a local Hugging Face causal LM, on the RL layer's building blocks.

``actors`` holds the policy, reward, reference and trainer actors; ``run`` wires them into
``forge_rl.loop.run_loop``; the config is ``forge_rl.config``.
"""
