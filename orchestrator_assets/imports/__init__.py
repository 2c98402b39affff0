"""Contact import: reading a file (``reading``, ``headers``), validation (``validation``,
``custom_fields``), the error report (``report``), both tied together for the import asset and the
preview job (``inspection``), sample data and the operational-store writes (``store``), and the
import lifecycle: the one-transaction commit (``commit``), duplicates of stored contacts
(``identity``), import ids and history (``history``) and the rollback (``rollback``).

Pure building blocks; the Dagster assets that call them live elsewhere. Import from the submodules
so that using one does not pay for importing the others.
"""
