"""Mutation-campaign tests for icechunk_dask/_listing.py (issue 13, part 4b)."""
