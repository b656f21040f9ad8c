"""Child-process entry points: one compression (or evaluation) per fresh process, reporting a JSON line."""
