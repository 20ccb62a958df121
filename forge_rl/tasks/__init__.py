"""Tasks with a real reward, for ``forge grpo``."""
