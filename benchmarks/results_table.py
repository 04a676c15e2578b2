"""Append benchmark rows to a section's table in benchmarks/RESULTS.md, creating the section when absent."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def append_rows(section: str, preamble: str, columns: list[str], rows: list[str], results: Path = RESULTS) -> None:
    """Add ``rows`` (markdown table lines) at the end of the table under ``## section``."""
    text = results.read_text() if results.exists() else "# Benchmark results\n"
    title = f"## {section}"
    if title not in text:
        text = (text.rstrip("\n") + f"\n\n{title}\n\n" + (preamble.rstrip("\n") + "\n\n" if preamble else "")
                + "| " + " | ".join(columns) + " |\n" + "|---" * len(columns) + "|\n")
    head, _, tail = text.partition(title)
    table_end = tail.find("\n\n", tail.find("|---"))
    block = "\n".join(rows)
    tail = tail[:table_end] + "\n" + block + tail[table_end:] if table_end != -1 else tail.rstrip("\n") + "\n" + block + "\n"
    results.write_text(head + title + tail)
