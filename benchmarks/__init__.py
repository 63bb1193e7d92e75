"""autofork's benchmarks: ``python -m benchmarks`` (see ``benchmarks/run.py``)."""
