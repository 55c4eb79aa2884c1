"""meshkit: supervisor, workers, locks, watchdog and sync for a small agent fleet.

Layers (see DESIGN.md and tests/test_layers.py):
  0 meshkit.core      vocabulary: errors, clock, plain data
  1 meshkit.rules     decisions: pure functions of (state, observation, now)
  2 meshkit.adapters  I/O, one OS facility each
  3 meshkit.roles     supervisor, worker, watchdog, sync, locks (never import each other)
  4 meshkit.cli       entry: argparse, signals, wiring
"""

__version__ = "0.1.0"
