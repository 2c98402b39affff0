"""Contact import: reading a file (``reading``, ``headers``), validation (``validation``,
``custom_fields``), the error report (``report``), both tied together for the import asset and the
preview job (``inspection``), sample data and the operational-store writes.

Import from the submodules so that using one does not pay for importing the others.
"""
