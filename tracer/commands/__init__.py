"""Click sub-commands, one module per area (see tracer.cli)."""
