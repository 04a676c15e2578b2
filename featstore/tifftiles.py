"""Direct tile decoding for Aperio SVS and generic tiled TIFF slides.

OpenSlide's ``read_region`` decodes each tile, paints it through cairo as premultiplied ARGB and
converts back to RGBA. For these two formats the pixels are simply the TIFF tiles, so reading the tile
bytes and decoding them with tifffile/imagecodecs (libjpeg-turbo, OpenJPEG, zlib) gives bit-identical
pixels at level 0 several times faster (benchmarks/RESULTS.md), which is what keeps many reader
processes ahead of a GPU. Each slide is checked against OpenSlide at open; any disagreement, or a
layout this module does not handle, leaves that slide on OpenSlide.

At pyramid levels above 0 a region starts at the level pixel nearest to ``x / downsample``; OpenSlide
would instead interpolate the sub-pixel remainder, so the two can differ by up to half a level pixel.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from featstore.errors import TileReadError

# Vendors whose OpenSlide levels are exactly the tiled pages of the TIFF; other TIFF-based formats
# (Leica SCN, Ventana BIF, Philips) place or overlap tiles in ways only OpenSlide knows.
DIRECT_VENDORS = ("aperio", "generic-tiff")
_CONTIG = 1


class TileCache:
    """Decoded tiles of one slide, least recently used evicted first, bounded in bytes across levels."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.bytes = max_bytes, 0
        self._tiles: OrderedDict[tuple[int, int], np.ndarray | None] = OrderedDict()

    def get(self, key: tuple[int, int]) -> np.ndarray | None | bool:
        """The tile (None for an empty one), or False when it is not cached."""
        tile = self._tiles.get(key, False)
        if tile is not False:
            self._tiles.move_to_end(key)
        return tile

    def put(self, key: tuple[int, int], tile: np.ndarray | None) -> None:
        self._tiles[key] = tile
        self.bytes += 0 if tile is None else tile.nbytes
        while self.bytes > self.max_bytes and len(self._tiles) > 1:
            old = self._tiles.popitem(last=False)[1]
            self.bytes -= 0 if old is None else old.nbytes


class TiffLevel:
    """One pyramid level read straight from its TIFF page."""

    def __init__(self, page, fd: int, name: str, cache: TileCache):
        self.page, self.fd, self.name, self.cache = page, fd, name, cache
        self.height, self.width = page.imagelength, page.imagewidth
        self.tile_h, self.tile_w = page.tilelength, page.tilewidth
        self.tiles_across = -(-self.width // self.tile_w)
        self._decode_kwargs = {"jpegtables": page.jpegtables} if page.jpegtables is not None else {}

    def _tile(self, index: int) -> np.ndarray | None:
        """Decoded tile ``index`` (tile_h x tile_w x 3), or None for a tile the file declares empty."""
        tile = self.cache.get((self.page.index, index))
        if tile is not False:
            return tile
        offset, count = int(self.page.dataoffsets[index]), int(self.page.databytecounts[index])
        if count == 0:
            tile = None  # a sparse tile: background, as OpenSlide paints it (transparent, then white)
        else:
            data = os.pread(self.fd, count, offset)
            if len(data) != count:
                raise TileReadError(f"{self.name}: tile {index} of page {self.page.index} is cut short "
                                    f"({len(data)} of {count} bytes at offset {offset}); the file is truncated")
            try:
                seg = self.page.decode(data, index, **self._decode_kwargs)[0]
            except Exception as exc:
                raise TileReadError(f"{self.name}: tile {index} of page {self.page.index} cannot be decoded "
                                    f"({type(exc).__name__}: {exc})") from exc
            if seg is None:
                raise TileReadError(f"{self.name}: tile {index} of page {self.page.index} decoded to nothing")
            tile = seg.reshape(seg.shape[-3:])
        self.cache.put((self.page.index, index), tile)
        return tile

    def read(self, x: int, y: int, width: int, height: int) -> np.ndarray:
        """RGB uint8 region at level pixel (x, y); outside the image is white."""
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + width, self.width), min(y + height, self.height)
        inside = (x0, y0, x1, y1) == (x, y, x + width, y + height)
        out = np.empty((height, width, 3), np.uint8) if inside else np.full((height, width, 3), 255, np.uint8)
        if x0 >= x1 or y0 >= y1:
            return out
        for ty in range(y0 // self.tile_h, (y1 - 1) // self.tile_h + 1):
            for tx in range(x0 // self.tile_w, (x1 - 1) // self.tile_w + 1):
                tile = self._tile(ty * self.tiles_across + tx)
                # Overlap of this tile with the region, in image pixels.
                ax0, ay0 = max(x0, tx * self.tile_w), max(y0, ty * self.tile_h)
                ax1, ay1 = min(x1, (tx + 1) * self.tile_w), min(y1, (ty + 1) * self.tile_h)
                dst = out[ay0 - y:ay1 - y, ax0 - x:ax1 - x]
                if tile is None:
                    dst[:] = 255
                else:
                    dst[:] = tile[ay0 - ty * self.tile_h:ay1 - ty * self.tile_h, ax0 - tx * self.tile_w:ax1 - tx * self.tile_w]
        return out


class TiffTiles:
    """The levels of one slide that can be read directly; closes its file descriptor and TiffFile."""

    def __init__(self, path: Path, level_dimensions: tuple[tuple[int, int], ...], cache_bytes: int = 64 << 20):
        import tifffile

        self.path = path
        self._tif = tifffile.TiffFile(path)
        self._fd = os.open(path, os.O_RDONLY)
        self.levels: dict[int, TiffLevel] = {}
        cache = TileCache(cache_bytes)  # one budget for all levels: planning reads one, patches another
        try:
            pages = [p for p in self._tif.pages if _readable(p, tifffile)]
            for level, (w, h) in enumerate(level_dimensions):
                match = [p for p in pages if (p.imagewidth, p.imagelength) == (w, h)]
                if len(match) == 1:
                    self.levels[level] = TiffLevel(match[0], self._fd, path.name, cache)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> TiffTiles:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._tif.close()


def _readable(page, tifffile) -> bool:
    """A tiled, 8-bit, 3-sample, interleaved page whose compression tifffile can decode."""
    try:
        return (page.is_tiled and page.imagedepth == 1 and page.samplesperpixel == 3 and page.bitspersample == 8
                and page.planarconfig == _CONTIG and page.photometric in (2, 6)
                and (page.compression == 1 or page.compression in tifffile.TIFF.DECOMPRESSORS))
    except Exception:  # a page tifffile cannot describe is simply not read directly
        return False


def open_direct(path: Path, vendor: str, level_dimensions: tuple[tuple[int, int], ...],
                check: Callable[[TiffTiles], str | None]) -> tuple[TiffTiles | None, str]:
    """Direct levels for ``path`` if its vendor's layout is plain TIFF tiles and they agree with OpenSlide.

    ``check(tiles)`` compares a region read both ways and returns a reason when they differ. Returns the
    readers (or None) and a note for provenance: which reader serves the pixels and why.
    """
    if vendor not in DIRECT_VENDORS:
        return None, f"openslide (no direct reader for vendor {vendor or 'unknown'!r})"
    try:
        tiles = TiffTiles(path, level_dimensions)
    except ImportError:
        return None, "openslide (tifffile/imagecodecs not installed)"
    except Exception as exc:
        return None, f"openslide (tifffile cannot parse the file: {type(exc).__name__}: {exc})"
    if 0 not in tiles.levels:
        tiles.close()
        return None, "openslide (level 0 is not a plain tiled RGB page)"
    try:
        problem = check(tiles)
    except TileReadError as exc:
        problem = str(exc)
    except BaseException:
        tiles.close()
        raise
    if problem:
        tiles.close()
        return None, f"openslide (direct TIFF decoding disagreed: {problem})"
    return tiles, "tifffile (tiles decoded directly; checked against OpenSlide at open)"
