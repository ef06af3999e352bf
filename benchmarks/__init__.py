"""Load generator and peer comparison for rawchat: ``python -m benchmarks``."""
