"""Contact import: sample data, validation and the operational-store writes.

Pure building blocks; the Dagster assets that call them live elsewhere. Import from the
submodules (``validation``, ``store``, ``sample_contacts``) so that using one does not pay for
importing the others.
"""
