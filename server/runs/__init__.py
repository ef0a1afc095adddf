"""Runs: accepting them, driving each against its upstream, relaying its events, its outcome,
abort, recovery after a restart and the stale-run reaper (``manager.RunManager`` wires them)."""
