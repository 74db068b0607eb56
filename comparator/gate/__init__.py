"""The nightly gate: a baseline store, reviewed waivers, and a history of every night.

- store.py: baselines in a directory, promoted atomically, the last N kept;
- waivers.py: intentional numerical changes, reviewed in the engine's repository, with an expiry;
- history.py: one compact line per tensor per night, and the drift they show;
- gate.py: ``run_gate``, one comparison with all of the above (``dumpcmp gate``, comparator/cli/gate.py).
"""
