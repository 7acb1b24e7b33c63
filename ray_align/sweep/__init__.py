"""`ray-align sweep`: a grid of one job's settings, run with what the points share computed once, and the
helpfulness-safety trade-off frontier they trace (docs/sweep.md). Nothing here imports Ray; the driver is
actors/sweep.py."""
