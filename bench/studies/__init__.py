"""Studies whose decision is made: each module's first line says what it decided and where the figure is quoted.

They are kept so that a decision can be revisited (a new model, a new CPU), not rerun to check
the service: what checks a claim of docs/benchmarks.md stays in bench/. Run one with
``python -m bench.studies.<name>``; results still go to bench/results/.
"""
