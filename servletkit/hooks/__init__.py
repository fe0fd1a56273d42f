"""Hook specifications, markers, events, decisions and the dispatcher (no I/O)."""
