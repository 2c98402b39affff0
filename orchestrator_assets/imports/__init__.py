"""Contact import: sample data, validation, the operational-store writes, and the import lifecycle
(one-transaction commit, duplicates of stored contacts, import ids and history, rollback).

Pure building blocks; the Dagster assets that call them live elsewhere. Import from the
submodules (``validation``, ``store``, ``commit``, ``identity``, ``history``, ``rollback``,
``sample_contacts``) so that using one does not pay for importing the others.
"""
