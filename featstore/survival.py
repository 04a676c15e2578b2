"""Survival tables: a follow-up time and an event indicator per patient (overall survival, a progression-free
interval), read from a clinical CSV/TSV such as TCGA's Pan-Gyn or PanCanAtlas clinical tables or cBioPortal's."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np

from featstore.barcodes import parse_barcode
from featstore.errors import InputError
from featstore.records import SurvivalTable, now_iso
from featstore.tables import _is_tumour, read_rows

TIME_UNITS = ("days", "months", "years")

# Event spellings across clinical tables: TCGA vital_status (Dead/Alive), cBioPortal ("1:DECEASED",
# "0:LIVING", "1:Recurred/Progressed"), and plain 1/0 or true/false.
EVENT_WORDS = {
    "1": True, "true": True, "yes": True, "event": True, "dead": True, "deceased": True, "died": True,
    "recurred": True, "progressed": True, "recurredprogressed": True,
    "0": False, "false": False, "no": False, "censored": False, "alive": False, "living": False,
    "diseasefree": False,
}
# Cells that mean "not recorded" in TCGA and cBioPortal exports: the patient has no usable follow-up.
MISSING = {"", "na", "nan", "none", "null", "[not available]", "[not applicable]", "[unknown]", "[discrepancy]",
           "[not evaluated]", "--", "'--"}


def _event(cell: str) -> bool | None:
    """True / False from an event cell, None for a value no table means as an event indicator."""
    text = cell.strip().lower()
    if ":" in text:  # cBioPortal: "1:DECEASED"
        text = text.split(":", 1)[0]
    return EVENT_WORDS.get(re.sub(r"[^a-z0-9]", "", text))


def read_survival(path: str | Path, id_column: str = "patient_id", time_column: str = "time",
                  event_column: str = "event", time_unit: str = "days",
                  skip_bad_times: bool = False) -> tuple[SurvivalTable, list[str]]:
    """Parse a survival table into one (time, event) per patient.

    ``time_column`` may name several columns, comma-separated: each row's time is the first of them that is
    filled in (TCGA keeps the time of a death and of the last follow-up in two columns:
    ``days_to_death,days_to_last_followup``). A row without a time is left out and counted; a negative or
    non-numeric time, or an event value that is no event indicator, is an error naming the row
    (``skip_bad_times``: a row with a bad time is left out instead, and named in the notes). Sample
    barcodes are reduced to patients; a normal-tissue sample's row is left out.
    """
    path = Path(path)
    if time_unit not in TIME_UNITS:
        raise InputError(f"--time-unit must be one of {', '.join(TIME_UNITS)}, got {time_unit!r}")
    header, body = read_rows(path)
    cols = [h.strip() for h in header]
    time_columns = [c.strip() for c in time_column.split(",") if c.strip()]
    for c in (id_column, *time_columns, event_column):
        if c not in cols:
            raise InputError(f"{path}: no column {c!r}; columns are {cols}")
    ci, ce, cts = cols.index(id_column), cols.index(event_column), [cols.index(c) for c in time_columns]
    chosen: dict[str, tuple[int, float, bool]] = {}
    left_out: Counter = Counter()
    bad: list[str] = []
    for i, row in enumerate(body, start=2):
        raw_id = row[ci].strip()
        if not raw_id:
            left_out["empty id"] += 1
            continue
        bc = parse_barcode(raw_id)
        if bc is not None and not _is_tumour(bc.sample_type or ""):
            left_out["normal or control sample"] += 1
            continue
        patient = bc.patient if bc else raw_id
        raw_event = row[ce].strip()
        if raw_event.lower() in MISSING:
            left_out["no event status"] += 1
            continue
        event = _event(raw_event)
        if event is None:
            raise InputError(f"{path}, row {i} (patient {patient}): {event_column!r} is {raw_event!r}, not an event "
                             "indicator; use 1/0, true/false, Dead/Alive, Deceased/Living or cBioPortal's '1:DECEASED'")
        cell = next((row[c].strip() for c in cts if row[c].strip().lower() not in MISSING), None)
        if cell is None:
            left_out["no follow-up time"] += 1
            continue
        try:
            t = float(cell)
        except ValueError:
            t = float("nan")
        if not np.isfinite(t) or t < 0:
            why = f"time {cell!r} in {time_column!r} is {'negative' if t < 0 else 'not a number'}"
            if not skip_bad_times:
                raise InputError(f"{path}, row {i} (patient {patient}): {why}; a follow-up time is a number of "
                                 f"{time_unit} >= 0 (--skip-bad-times leaves such rows out, naming them)")
            bad.append(f"row {i} ({patient}): {why}")
            continue
        prev = chosen.get(patient)
        if prev is not None and (prev[1], prev[2]) != (t, event):
            raise InputError(f"{path}: patient {patient} has two follow-ups, ({prev[1]:g}, event={prev[2]}) in row "
                             f"{prev[0]} and ({t:g}, event={event}) in row {i}")
        chosen.setdefault(patient, (i, t, event))
    if not chosen:
        raise InputError(f"{path}: no patient has both a follow-up time and an event status (left out: "
                         f"{dict(left_out)})")
    patients = sorted(chosen)
    time = np.array([chosen[p][1] for p in patients], np.float64)
    event = np.array([chosen[p][2] for p in patients], bool)
    if not event.any():
        raise InputError(f"{path}: none of the {len(patients)} patients has an event in {event_column!r} (all "
                         "censored), so there is nothing to rank survival by; check the column and its values")
    notes = [f"{len(patients)} patients, {int(event.sum())} events, median follow-up {np.median(time):g} {time_unit}"]
    if left_out:
        notes.append(f"left out: {dict(left_out)}")
    if bad:
        notes.append(f"WARNING: {len(bad)} rows with a bad follow-up time left out (--skip-bad-times): {'; '.join(bad)}")
    table = SurvivalTable(patients, time, event, {
        "source": str(path), "source_name": path.name, "imported": now_iso(), "id_column": id_column,
        "time_column": time_column, "event_column": event_column, "time_unit": time_unit,
        "left_out": dict(left_out), "bad_times": bad, "notes": notes})
    return table, notes
