"""The search-quality benchmark (``benchmarks/bench_quality.py``): problems, methods, runs,
statistics and report. Imported with ``benchmarks/`` on the path, as the scripts run."""
