"""The RL layer: building blocks for RL post-training on Forge.

It sits above the kernel and imports only forge_core's public API (``forge_core``,
``forge_core.actor``, ``forge_core.weights``, ``forge_core.errors``); the kernel never imports
it. ``forge demo`` (``forge_rl.demo``) is a user of these blocks.
"""
