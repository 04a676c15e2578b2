"""One reader interface over whole-slide images (OpenSlide), plain images and folders of tiles.

Every reader answers in level-0 pixels and physical microns per pixel, returns RGB uint8 composited
onto white, and raises :class:`SlideError` with the slide named when something cannot be read: a
tile that fails is never replaced by a blank one.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from featstore.errors import SlideError
from featstore.tifftiles import SCALES, ScaledTiffLevel, TiffTiles, TileReadError, open_direct

WSI_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide", ".dcm")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
SLIDE_SUFFIXES = WSI_SUFFIXES + IMAGE_SUFFIXES


# libjpeg-turbo's scaled IDCT is, to within a fraction of a grey level, the full decode averaged over
# scale x scale blocks (docs/extract.md); reading RGB tiles as YCbCr is tens of levels off.
MAX_SCALED_DIFF = 1.0

# Formats only OpenSlide reads (never plain images); a .tif may be either.
WHOLE_SLIDE_SUFFIXES = tuple(s for s in WSI_SUFFIXES if s not in (".tif", ".tiff", ".dcm"))


@dataclass(frozen=True)
class Region:
    """A rectangle in level-0 pixels that is tiled on its own (a whole slide, or one tile of a folder)."""

    x: int
    y: int
    width: int
    height: int


def _to_rgb_on_white(img: Image.Image) -> np.ndarray:
    if img.mode not in ("RGBA", "LA", "P"):
        return np.asarray(img.convert("RGB"))
    rgba = np.asarray(img.convert("RGBA"))
    alpha = rgba[..., 3:]
    if alpha.min() == 255:  # the common case inside tissue: nothing to composite (this runs per patch)
        return np.ascontiguousarray(rgba[..., :3])
    # OpenSlide hands out non-premultiplied RGBA: blend onto white.
    rgb = rgba[..., :3].astype(np.uint16) * alpha + 255 * (255 - alpha.astype(np.uint16))
    return ((rgb + 127) // 255).astype(np.uint8)


class SlideReader:
    """Base class; see :func:`open_slide`."""

    path: Path
    mpp: float | None
    mpp_source: str
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    pixel_source: str  # which library decodes the pixels, recorded in provenance
    # Whether other reader workers may open it too, to share its patches out: cheap for tiled slides,
    # which read tiles as needed, but a plain image is decoded whole by every process that reads it.
    shareable: bool = False

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    def regions(self) -> list[Region]:
        w, h = self.dimensions
        return [Region(0, 0, w, h)]

    def read(self, x: int, y: int, level: int, width: int, height: int, scale: int = 1) -> np.ndarray:
        """RGB uint8 region of ``width`` x ``height`` level pixels at level-0 (x, y); ``scale`` > 1 (only as
        :meth:`scaled_decoding` allows) returns it at 1/scale of that size."""
        raise NotImplementedError

    def scaled_decoding(self, level: int, factor: float) -> tuple[int, str]:
        """How ``level`` is reduced by ``factor`` to the patch size: a JPEG scale (2 or 4) the decoder gives
        at no cost, and a note for provenance; (1, why not) where the patch is resized after a full decode."""
        return 1, "resize (antialiased bilinear: no scaled decoding for this reader)"

    def thumbnail(self, region: Region, max_side: int) -> tuple[np.ndarray, float]:
        """RGB image of ``region`` no larger than ``max_side``, and level-0 pixels per thumbnail pixel."""
        raise NotImplementedError

    def best_level(self, downsample: float) -> int:
        """Highest-resolution-saving level whose downsample does not exceed ``downsample``."""
        ok = [i for i, d in enumerate(self.level_downsamples) if d <= downsample * 1.001]
        return max(ok) if ok else 0

    def close(self) -> None:
        pass

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _mpp_from_properties(props: dict, path: Path, allow_objective: bool) -> tuple[float | None, str]:
    for kx, ky in (("openslide.mpp-x", "openslide.mpp-y"), ("aperio.MPP", "aperio.MPP")):
        try:
            mx, my = float(props[kx]), float(props[ky])
        except (KeyError, ValueError):
            continue
        if mx > 0 and my > 0:
            if abs(mx - my) / mx > 0.01:
                warnings.warn(f"{path.name}: anisotropic pixels (mpp-x {mx}, mpp-y {my}); using mpp-x", stacklevel=3)
            return mx, f"metadata:{kx}"
    unit = props.get("tiff.ResolutionUnit", "").lower()
    try:
        res = float(props["tiff.XResolution"])
        if res > 0 and unit in ("centimeter", "inch"):
            return (1e4 if unit == "centimeter" else 25400.0) / res, "metadata:tiff.XResolution"
    except (KeyError, ValueError):
        pass
    if allow_objective:
        try:
            power = float(props["openslide.objective-power"])
        except (KeyError, ValueError):
            return None, "none"
        if power > 0:
            warnings.warn(
                f"{path.name}: no mpp in metadata; assuming 10/{power:g} = {10 / power:g} µm/px from the "
                "objective power (nominal, often wrong by 5-10%); pass the true mpp in a manifest",
                stacklevel=3,
            )
            return 10.0 / power, "objective-power"
    return None, "none"


class OpenSlideReader(SlideReader):
    """Whole-slide formats through OpenSlide; plain images through OpenSlide's PIL-backed ImageSlide."""

    def __init__(self, path: str | Path, mpp: float | None = None, allow_objective: bool = True, direct: bool = True):
        import openslide

        self.path = Path(path)
        # A whole-slide file OpenSlide rejects is damaged, not a plain image: falling back to PIL would read its
        # first TIFF page and report the wrong problem (no mpp) instead of the real one.
        whole_slide = self.path.suffix.lower() in WHOLE_SLIDE_SUFFIXES
        try:
            self._slide = (openslide.OpenSlide if whole_slide else openslide.open_slide)(str(self.path))
        except Exception as exc:  # OpenSlideError, PIL's UnidentifiedImageError, OSError, ...
            if whole_slide:
                raise SlideError(f"{self.path.name}: OpenSlide cannot read this {self.path.suffix} file ({exc}); it is "
                                 f"truncated or damaged ({self.path.stat().st_size:,} bytes), or not a whole-slide "
                                 "image") from exc
            raise SlideError(f"{self.path.name}: cannot open as a slide or image ({type(exc).__name__}: {exc})") from exc
        self.level_dimensions = tuple(self._slide.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._slide.level_downsamples)
        self.properties = dict(self._slide.properties)
        if mpp is not None:
            self.mpp, self.mpp_source = float(mpp), "given"
        else:
            self.mpp, self.mpp_source = _mpp_from_properties(self.properties, self.path, allow_objective)
        self._direct: TiffTiles | None = None
        self._scaled: dict[tuple[int, int], ScaledTiffLevel] = {}
        plain_image = isinstance(self._slide, openslide.ImageSlide)
        self.pixel_source = "PIL (plain image, through openslide.ImageSlide)" if plain_image else "openslide"
        self.shareable = not plain_image
        if direct and not plain_image:
            try:
                self._direct, self.pixel_source = open_direct(self.path, self.properties.get("openslide.vendor", ""),
                                                              self.level_dimensions, self._disagreement)
            except BaseException:
                self._slide.close()
                raise

    @property
    def declared_bytes(self) -> int | None:
        """Bytes the level-0 tiles hold, where the file is read directly (None otherwise): 0 for a file that
        declares a size it has no data for."""
        if self._direct is None or 0 not in self._direct.levels:
            return None
        return int(sum(self._direct.levels[0].page.databytecounts))

    def _disagreement(self, tiles: TiffTiles) -> str | None:
        """Why direct decoding cannot stand in for OpenSlide on this slide, or None when they agree.

        Level 0 is compared at the centre (where tissue usually is), the other levels at their origin
        (the only place the two agree exactly when the downsample is not an integer).
        """
        w, h = self.level_dimensions[0]
        size = min(256, w, h)
        spots = [(0, (w - size) // 2, (h - size) // 2)] + [(level, 0, 0) for level in tiles.levels if level > 0]
        for level, x, y in spots:
            ds = self.level_downsamples[level]
            side = min(size, *self.level_dimensions[level])
            ours = tiles.levels[level].read(round(x / ds), round(y / ds), side, side).astype(np.int16)
            theirs = self._read_openslide(x, y, level, side, side)
            diff = np.abs(ours - theirs)
            if diff.mean() > 0.5:
                return f"level {level} at ({x}, {y}): mean |difference| {diff.mean():.2f}, max {diff.max()}"
        return None

    def read(self, x: int, y: int, level: int, width: int, height: int, scale: int = 1) -> np.ndarray:
        if self._direct is not None and level in self._direct.levels:
            tiles = self._direct.levels[level] if scale == 1 else self._scaled_level(level, scale)
            ds = self.level_downsamples[level] * scale
            try:
                return tiles.read(round(x / ds), round(y / ds), round(width / scale), round(height / scale))
            except TileReadError as exc:
                raise SlideError(f"{self.path.name}: cannot read region at ({x}, {y}) level {level}: {exc}") from exc
        if scale != 1:
            raise ValueError(f"{self.path.name}: level {level} is read through OpenSlide, which has no scaled decoding")
        return self._read_openslide(x, y, level, width, height)

    def _scaled_level(self, level: int, scale: int) -> ScaledTiffLevel:
        key = (level, scale)
        if key not in self._scaled:
            scaled = self._direct.levels[level].scaled(scale)
            if scaled is None:
                raise ValueError(f"{self.path.name}: level {level} cannot be decoded at 1/{scale}")
            self._scaled[key] = scaled
        return self._scaled[key]

    def scaled_decoding(self, level: int, factor: float) -> tuple[int, str]:
        """The largest JPEG scale within ``factor`` (allowing the patch 2% of upsampling afterwards, as a
        0.252 µm/px scan read at 0.5 needs), checked on this slide: a region at the level's centre decoded at
        that scale must equal the full decode averaged over scale x scale blocks (what the scaled IDCT
        computes) within MAX_SCALED_DIFF grey levels on average; else the patch is resized."""
        scale = max((s for s in SCALES if s <= factor * 1.02), default=1)
        full = self.direct_level(level)
        if scale == 1:
            return 1, f"resize (antialiased bilinear: a reduction of {factor:.2f} has no JPEG scale)"
        if full is None or full.scaled(scale) is None:
            return 1, "resize (antialiased bilinear: this level is not RGB-stored JPEG tiles read directly)"
        side = min(256 * scale, full.width, full.height) // scale * scale
        if side < scale * 8:
            return 1, "resize (antialiased bilinear: level too small to check scaled decoding)"
        x, y = (full.width - side) // 2 // scale * scale, (full.height - side) // 2 // scale * scale
        try:
            ours = self._scaled_level(level, scale).read(x // scale, y // scale, side // scale, side // scale)
            n = side // scale
            box = full.read(x, y, side, side).reshape(n, scale, n, scale, 3).mean(axis=(1, 3), dtype=np.float32)
        except TileReadError as exc:
            return 1, f"resize (antialiased bilinear: scaled decoding failed its check: {exc})"
        diff = float(np.abs(ours - box).mean())
        if diff > MAX_SCALED_DIFF:
            return 1, (f"resize (antialiased bilinear: scaled decoding differs by {diff:.2f} grey levels on "
                       f"average from the full decode's {scale}x{scale} block means, over {MAX_SCALED_DIFF})")
        return scale, (f"jpeg-dct-1/{scale} (libjpeg-turbo scaled IDCT; {diff:.2f} grey levels on average from the "
                       f"full decode's {scale}x{scale} block means at the level's centre)")

    def direct_level(self, level: int):
        """The TIFF level read directly (featstore.tifftiles.TiffLevel), or None where OpenSlide reads it."""
        return None if self._direct is None else self._direct.levels.get(level)

    def _read_openslide(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        try:
            img = self._slide.read_region((int(x), int(y)), int(level), (int(width), int(height)))
        except Exception as exc:
            raise SlideError(f"{self.path.name}: cannot read region at ({x}, {y}) level {level}: {exc}") from exc
        return _to_rgb_on_white(img)

    def thumbnail(self, region: Region, max_side: int, strip_bytes: int = 32 << 20) -> tuple[np.ndarray, float]:
        """Block means over the best level, read in strips: memory stays flat even when a slide has no
        pyramid and the best level is level 0 of a 100,000-pixel scan."""
        level = self.best_level(max(max(region.width, region.height) / max_side, 1.0))
        lds = self.level_downsamples[level]
        w, h = math.ceil(region.width / lds), math.ceil(region.height / lds)
        factor = max(1, math.ceil(max(w, h) / max_side))  # level pixels per thumbnail pixel, each way
        out_w, out_h = math.ceil(w / factor), math.ceil(h / factor)
        rows = max(1, strip_bytes // (out_w * factor * factor * 3))  # thumbnail rows per strip
        out = np.empty((out_h, out_w, 3), np.uint8)
        for r0 in range(0, out_h, rows):
            r1 = min(out_h, r0 + rows)
            # Beyond the slide's edge the read is white, so edge blocks average in background.
            strip = self.read(region.x, region.y + round(r0 * factor * lds), level, out_w * factor, (r1 - r0) * factor)
            means = strip.reshape(r1 - r0, factor, out_w, factor, 3).mean(axis=(1, 3), dtype=np.float32)
            out[r0:r1] = np.round(means).astype(np.uint8)
        return out, lds * factor

    def close(self) -> None:
        if self._direct is not None:
            self._direct.close()
        self._slide.close()


class TileFolderReader(SlideReader):
    """A folder of pre-extracted tiles (one patient) read as one virtual slide.

    Tiles are laid out left to right in sorted file-name order, tile ``i`` at level-0 x offset equal to
    the summed widths of the tiles before it, y = 0. Each tile is tiled on its own (a region), so no
    patch ever spans two tiles.
    """

    def __init__(self, path: str | Path, mpp: float | None):
        self.path = Path(path)
        self.files = sorted(f for f in self.path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES + (".tif", ".tiff"))
        if not self.files:
            raise SlideError(f"{self.path.name}: tile folder holds no images")
        self._images: dict[int, np.ndarray] = {}
        sizes = []
        for f in self.files:
            try:
                with Image.open(f) as im:
                    sizes.append(im.size)
            except Exception as exc:
                raise SlideError(f"{self.path.name}/{f.name}: cannot open tile ({exc})") from exc
        self.offsets = np.concatenate([[0], np.cumsum([w for w, _ in sizes])]).astype(int)
        self._regions = [Region(int(self.offsets[i]), 0, w, h) for i, (w, h) in enumerate(sizes)]
        self.level_dimensions = ((int(self.offsets[-1]), max(h for _, h in sizes)),)
        self.level_downsamples = (1.0,)
        self.pixel_source = "PIL (tile folder)"
        self.mpp, self.mpp_source = (float(mpp), "given") if mpp is not None else (None, "none")

    def regions(self) -> list[Region]:
        return list(self._regions)

    def _tile(self, i: int) -> np.ndarray:
        if i not in self._images:
            try:
                with Image.open(self.files[i]) as im:
                    self._images = {i: _to_rgb_on_white(im)}  # keep one decoded tile: memory stays flat
            except Exception as exc:
                raise SlideError(f"{self.path.name}/{self.files[i].name}: cannot read tile ({exc})") from exc
        return self._images[i]

    def read(self, x: int, y: int, level: int, width: int, height: int, scale: int = 1) -> np.ndarray:
        i = int(np.searchsorted(self.offsets, x, side="right") - 1)
        tile = self._tile(min(max(i, 0), len(self.files) - 1))
        out = np.full((height, width, 3), 255, np.uint8)
        lx = x - int(self.offsets[i])
        crop = tile[max(y, 0): y + height, max(lx, 0): lx + width]
        out[: crop.shape[0], : crop.shape[1]] = crop
        return out

    def thumbnail(self, region: Region, max_side: int) -> tuple[np.ndarray, float]:
        img = self._tile(self._regions.index(region))
        scale = max(1.0, max(region.width, region.height) / max_side)
        if scale > 1.0:
            img = np.asarray(Image.fromarray(img).resize(
                (max(1, round(region.width / scale)), max(1, round(region.height / scale))), Image.Resampling.BILINEAR))
        return img, region.width / img.shape[1]


def open_slide(path: str | Path, mpp: float | None = None, allow_objective: bool = True,
               direct: bool = True) -> SlideReader:
    """Open a whole-slide image, a plain image, or a folder of tiles.

    ``direct`` lets SVS and tiled TIFF slides be decoded straight from their tiles (see
    :mod:`featstore.tifftiles`); False sends every pixel through OpenSlide.
    """
    p = Path(path)
    if not p.exists():
        raise SlideError(f"{p}: no such file or folder")
    if p.is_dir():
        return TileFolderReader(p, mpp)
    return OpenSlideReader(p, mpp, allow_objective, direct)
