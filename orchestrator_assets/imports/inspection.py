"""One contacts file read, validated and reported: what the import asset and the preview job share.

Both must say the same thing about the same file, so both go through ``inspect_file``; they
differ only in what happens next (the import hands the good rows on or fails, the preview
shows them and stops).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pandas as pd

from orchestrator_assets.imports.custom_fields import schema_columns, with_json_values
from orchestrator_assets.imports.headers import OUR_COLUMNS
from orchestrator_assets.imports.reading import DELIMITERS, ReadResult, Refusal, read_contacts_file
from orchestrator_assets.imports.report import (
    first_problems_markdown,
    grouped_markdown,
    problems_frame,
    refusal_problems,
    shown,
    write_report,
)
from orchestrator_assets.imports.validation import ValidationResult, validate_contact_rows
from orchestrator_assets.tables import markdown_table
from policies.loader import load_tenants
from resources.settings import get_settings


@dataclass(frozen=True)
class Inspection:
    """``read`` is a ``Refusal`` or the file's records; ``validation`` is ``None`` for a refusal."""

    path: Path
    read: ReadResult | Refusal
    validation: ValidationResult | None
    problems: pd.DataFrame
    report_path: Path

    @property
    def refused(self) -> bool:
        return isinstance(self.read, Refusal)

    @property
    def rejected_rows(self) -> int:
        return int(self.problems["row"].nunique())

    def metadata(self) -> dict:
        """What an operator reads about the file in the run: counts, detection, problems by reason."""
        meta: dict = {
            "source_file": dg.MetadataValue.path(str(self.path)),
            "error_report": dg.MetadataValue.path(str(self.report_path)),
            "problems_by_reason": dg.MetadataValue.md(grouped_markdown(self.problems)),
            "first_problems": dg.MetadataValue.md(first_problems_markdown(self.problems)),
        }
        if isinstance(self.read, ReadResult):
            good = self.validation.good
            meta |= {
                "rows_read": self.read.records,
                "rows_valid": len(good),
                "rows_rejected": self.rejected_rows,
                # exact repeats of an earlier row, imported once (not errors: nothing is lost)
                "rows_collapsed": len(self.validation.notices),
                "detected": dg.MetadataValue.md(_detected(self.read)),
            }
        return meta


def error_report_path(tenant: str, path: Path) -> Path:
    """One report per tenant and file name, replaced by every run of a file with that name."""
    return get_settings().home / "import_errors" / tenant / f"{path.stem}.errors.csv"


def inspect_file(path: Path, tenant: str) -> Inspection:
    """Read and validate ``path`` for ``tenant`` (with the tenant's custom fields) and (re)write its
    error report."""
    settings = load_tenants().tenants[tenant]
    fields = settings.custom_fields
    clashes = sorted(set(fields) & set(OUR_COLUMNS))
    read = (
        Refusal("tenant configuration", f"custom field(s) {', '.join(clashes)} in tenants.yaml have the name of a built-in column: rename them")
        if clashes
        else read_contacts_file(path, {name: field.aliases for name, field in fields.items()})
    )
    report_path = error_report_path(tenant, path)
    if isinstance(read, Refusal):
        problems = refusal_problems(read)
        write_report(problems, report_path)
        return Inspection(path, read, None, problems, report_path)
    validation = validate_contact_rows(
        read.frame, settings.country, rows=read.rows, extra_columns=schema_columns(fields), default_timezone=settings.timezone
    )
    validation = ValidationResult(with_json_values(validation.good, read.frame, read.rows, fields), validation.errors, validation.notices)
    problems = problems_frame(read.problems, validation.errors)
    write_report(problems, report_path)
    return Inspection(path, read, validation, problems, report_path)


def refusal_failure(inspection: Inspection) -> dg.Failure:
    """A refused file as a clean step failure: the reason as description, no traceback to read."""
    refusal = inspection.read
    return dg.Failure(
        description=f"{inspection.path.name} not imported: {refusal.reason}: {refusal.detail}",
        metadata=inspection.metadata(),
        allow_retries=False,
    )


ENCODING_NAMES = {"utf-8": "UTF-8", "utf-8-sig": "UTF-8 with BOM", "utf-16": "UTF-16", "cp1251": "Windows-1251", "cp1252": "Windows-1252"}


def _detected(read: ReadResult) -> str:
    rows = [
        ("encoding", ENCODING_NAMES.get(read.encoding, read.encoding)),
        ("delimiter", DELIMITERS.get(read.delimiter, read.delimiter)),
        ("columns renamed", ", ".join(f"{written} → {ours}" for written, ours in read.renamed.items()) or "none"),
        ("columns ignored (unknown)", ", ".join(shown("", name) for name in read.ignored_columns) or "none"),
    ]
    return markdown_table(["what", "found"], rows)
