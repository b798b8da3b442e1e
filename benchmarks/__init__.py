"""cofunc's benchmarks, a package run from the repository root: ``python -m benchmarks.bench_conv``
(and so on for each ``bench_*.py``), so that this checkout's ``cofunc`` and the shared helpers in
``benchmarks._common`` are imported without touching ``sys.path``. ``make bench`` runs them all."""
