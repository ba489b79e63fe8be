"""The test suite.

Its processes run numpy's BLAS on one thread per call, as scripts/serve.sh runs the server: the
servers the tests start in-process would otherwise wake a second BLAS thread for each small matrix
product of an embedding, which then spins on the other core (on the 2-core CI machine an embedding
took half as much CPU again). Set here, in the package, before tests/conftest.py imports numpy.
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
