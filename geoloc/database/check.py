"""``geoloc check``: every verification at once, on a database that may be damaged."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from geoloc.database.layout import SQLITE
from geoloc.database.store import Database
from geoloc.errors import DatabaseDamagedError
from geoloc.files import json_path


@dataclass
class CheckReport:
    db: Path
    problems: list[str] = field(default_factory=list)
    photos: int = 0
    located: int = 0
    verified: int = 0  # descriptors checked against their checksum
    unreferenced: int = 0  # rows no photo refers to (dead rows)
    checksums: bool = True  # False for a geoloc 0.1.0 database, which stored none
    #: The manifest as opened (empty when the database would not open), for checks made above
    #: this layer (the model file: :func:`geoloc.descriptors.database_model.model_file_problem`).
    manifest: dict = field(default_factory=dict, repr=False)

    @property
    def sound(self) -> bool:
        return not self.problems

    def to_json(self) -> dict:
        return {"db": json_path(self.db), "sound": self.sound, "photos": self.photos, "located": self.located,
                "verified": self.verified, "unreferenced_rows": self.unreferenced,
                "checksums": self.checksums, "problems": list(self.problems)}


def check(db: Path) -> CheckReport:
    """Every check: files against each other, SQLite's full integrity check, every descriptor
    against its checksum and its photo's hash, the mirrors against their copies."""
    report = CheckReport(db=Path(db).expanduser().absolute())
    try:
        database = Database.open(report.db, allow_damage=True)
    except DatabaseDamagedError as exc:
        report.problems.extend(exc.problems)
        return report
    with database:
        report.manifest = dict(database.manifest)
        report.problems.extend(database.structural_problems())
        verdicts = [row[0] for row in database.conn.fetch_all("PRAGMA integrity_check(20)")]
        if verdicts != ["ok"]:
            report.problems.extend(f"{SQLITE}: {v}" for v in verdicts)
            return report
        if report.problems:
            return report
        counts = database.counts()
        report.photos, report.located = counts["total"], counts["located"]
        report.checksums = database.manifest.get("format", 1) >= 2 and database.meta("manifest") is not None
        records = database.photos()
        report.problems.extend(database.verify(records, budget=1 << 62))
        report.verified = len(records) if report.checksums else 0
        report.problems.extend(database.mirror_problems())
        report.unreferenced = database.dead_rows
    return report
