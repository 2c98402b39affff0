"""Duplicate contacts: fuzzy candidates (``matching``), merges and their exact reversal (``merge``)."""
