"""The locks role: list, reap and run-under-a-lock, wired from config.

Thin on purpose: the reaper itself is meshkit.adapters.lockreap.reap (layer 2),
so the supervisor can run it every cycle without importing this role.
  reaper.py   one pass of list / reap with the configured alert command
  runner.py   `locks run`: hold a lock while a command runs
"""
