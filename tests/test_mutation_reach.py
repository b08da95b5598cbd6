"""Mutation-campaign tests for icechunk_dask/_reach.py (issue 13, part 4b)."""
