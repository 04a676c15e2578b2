"""What a slide, feature set, table or view may be called: names become path components in both backends."""

from __future__ import annotations

MAX_NAME = 200  # bytes in UTF-8
_RESERVED = {"zarr.json"}  # the metadata document of every Zarr v3 node


def check_name(name: str, what: str) -> str:
    """Names become path components in both backends; reject those that would not round-trip or would
    collide with the layout's own names (checked when slides are planned, so a bad name fails before
    any compute)."""
    if not isinstance(name, str) or not name or name.strip() != name:
        raise ValueError(f"{what} {name!r} must be a non-empty string without surrounding spaces")
    if "/" in name or "\\" in name or name.startswith((".", "_")):
        raise ValueError(f"{what} {name!r} may not contain '/' or start with '.' or '_'")
    # Bytes, not characters: a name is a path component, and file systems bound those at 255 bytes (the
    # export adds a suffix to it; staging paths never hold it).
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > MAX_NAME:
        raise ValueError(f"{what} {name[:40]!r}... is {size} bytes long in UTF-8; at most {MAX_NAME}")
    if name in _RESERVED or not name.isprintable():
        raise ValueError(f"{what} {name!r} is reserved by the store layout or holds unprintable characters")
    return name
