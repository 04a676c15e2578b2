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
JPEG = 7  # TIFF compression code
RGB = 2  # TIFF photometric code: components stored as RGB (Aperio), not YCbCr
ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"  # APP14, transform 0: no colour conversion
SCALES = (2, 4)  # reductions libjpeg-turbo's scaled IDCT gives exactly (1/8 too, not measured here)


def jpeg_stream(data: bytes, tables: bytes | None, rgb: bool) -> bytes:
    """A complete JPEG from an abbreviated TIFF tile: the page's tables spliced in after SOI (dropping the
    tables' own EOI and the tile's SOI), and an Adobe marker for RGB-stored tiles."""
    if tables:
        data = tables[:-2] + data[2:]
    return data[:2] + ADOBE_RGB + data[2:] if rgb else data


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

    scale = 1  # level pixels per pixel read: > 1 for a level decoded at a reduced scale (ScaledTiffLevel)

    def __init__(self, page, fd: int, name: str, cache: TileCache):
        self.page, self.fd, self.name, self.cache = page, fd, name, cache
        self.height, self.width = -(-page.imagelength // self.scale), -(-page.imagewidth // self.scale)
        self.tile_h, self.tile_w = page.tilelength // self.scale, page.tilewidth // self.scale
        self.tiles_across = -(-page.imagewidth // page.tilewidth)
        self._decode_kwargs = {"jpegtables": page.jpegtables} if page.jpegtables is not None else {}
        self.decoded = 0  # tiles decoded so far: with the cache, each tile a slide's patches need about once

    def scaled(self, scale: int) -> ScaledTiffLevel | None:
        """This level decoded at 1/``scale`` in the DCT domain, or None where it cannot be. RGB-stored JPEG tiles
        only (Aperio's, so every TCGA slide's): there the reduced decode is the full decode's block means; for
        YCbCr tiles it takes the chroma as stored where the full decode interpolates it, grey levels apart on
        stained tissue (docs/extract.md)."""
        page = self.page
        if (page.compression != JPEG or page.photometric != RGB or scale not in SCALES or page.tilelength % scale
                or page.tilewidth % scale):
            return None
        return ScaledTiffLevel(page, self.fd, self.name, self.cache, scale)

    def _decode(self, data: bytes, index: int) -> np.ndarray:
        seg = self.page.decode(data, index, **self._decode_kwargs)[0]
        if seg is None:
            raise ValueError("decoded to nothing")
        return seg.reshape(seg.shape[-3:])

    def _tile(self, index: int) -> np.ndarray | None:
        """Decoded tile ``index`` (tile_h x tile_w x 3), or None for a tile the file declares empty."""
        key = (self.page.index, self.scale, index)
        tile = self.cache.get(key)
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
            self.decoded += 1
            try:
                tile = self._decode(data, index)
            except Exception as exc:
                raise TileReadError(f"{self.name}: tile {index} of page {self.page.index} cannot be decoded "
                                    f"({type(exc).__name__}: {exc})") from exc
        self.cache.put(key, tile)
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


class ScaledTiffLevel(TiffLevel):
    """A JPEG level decoded at 1/``scale`` by libjpeg-turbo's scaled IDCT (through simplejpeg, which calls it
    with less overhead per tile than PIL's draft mode): the IDCT and colour conversion run on the reduced
    image and no resize follows. Regions are in scaled pixels (a level pixel ``x`` is ``x / scale`` here)."""

    def __init__(self, page, fd: int, name: str, cache: TileCache, scale: int):
        self.scale = scale
        super().__init__(page, fd, name, cache)
        self._tables, self._rgb = page.jpegtables, page.photometric == RGB

    def _decode(self, data: bytes, index: int) -> np.ndarray:
        import simplejpeg

        tile = simplejpeg.decode_jpeg(jpeg_stream(data, self._tables, self._rgb), colorspace="RGB",
                                      min_height=self.tile_h, min_width=self.tile_w)
        if tile.shape[:2] != (self.tile_h, self.tile_w):
            raise ValueError(f"decoded at {tile.shape[1]} x {tile.shape[0]} px, expected {self.tile_w} x {self.tile_h}")
        return tile


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
