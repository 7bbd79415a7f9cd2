# Converge the example specs once, with a local state dir.
run:
    reconcile --once --specs specs --state-dir .state

# The whole test suite.
test:
    python -m pytest -q

lint:
    ruff check .
