"""Simulation suites of mainspring: scenarios over the core and the order example.

Run one with ``mainspring simulate simulations.core:tally --seeds 100`` from the repository
root; ``.ci/run`` runs them all, with the regression seeds and the self-check.
"""
