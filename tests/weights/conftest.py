"""Weight-sync tests: the actor classes are importable by name in spawned processes."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
