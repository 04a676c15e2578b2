"""JPEG tiles decoded in batches on the run's device (``--decoder gpu``): nvJPEG on CUDA through
``torchvision.io.decode_jpeg``; on a CPU the same code path runs with libjpeg-turbo standing in.

Reader workers then only plan slides and send patch coordinates; the main process reads the compressed
bytes of the tiles a chunk of patches needs (a few ``pread`` calls), turns each into a complete JPEG
stream (TIFF tiles are abbreviated: the quantisation and Huffman tables live once in the page's
JPEGTables; Aperio stores RGB, not YCbCr, which an Adobe APP14 marker with transform 0 tells the decoder),
decodes them in one batched call, keeps them in a bounded tile cache on the device, and crops and resizes
the patches there, so pixels never cross to the host.

Checked, never silently different: when a slide's plan reaches the main process, a few of its tiles are
decoded both ways, on the device and with the CPU decoder the ``cpu`` path uses (tifffile/imagecodecs); a
slide whose tiles differ by more than MAX_MEAN_DIFF grey levels on average or MAX_ABS_DIFF anywhere is
read by the reader workers with the CPU decoder instead, and its provenance (``pixels``) says so.

Measured on an H200 (benchmarks/RESULTS.md): nvJPEG (torchvision 0.26) ignores the Adobe marker, so
Aperio's RGB tiles fail the check (54 grey levels off on average) and are read on the CPU; and where it
is used the path is slower end to end than the CPU decoder in 15 reader workers, which is why
``--decoder auto`` picks ``cpu``.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from featstore.errors import TileReadError
from featstore.tifftiles import JPEG, RGB, jpeg_stream
from featstore.tiling import Geometry

# nvJPEG and libjpeg-turbo implement the IDCT and chroma upsampling differently: a grey level on average,
# rare larger steps at sharp edges. Bounds for the per-slide check.
MAX_MEAN_DIFF, MAX_ABS_DIFF = 1.0, 48
CHECK_TILES = 4


def _decode_jpeg(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    import warnings

    with warnings.catch_warnings():
        # torchvision 0.29 announces that its image codecs move to TorchCodec; these still work and are the
        # batched nvJPEG entry point torch ships today.
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import ImageReadMode, decode_jpeg

        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


class DeviceTileDecoder:
    """One TIFF level's JPEG tiles, decoded on ``device`` and cached there (least recently used first out)."""

    def __init__(self, level, device: torch.device, cache_tiles: int = 1024):
        page = level.page
        if page.compression != JPEG:
            raise ValueError(f"{level.name}: page {page.index} is not JPEG-compressed (compression {page.compression})")
        self.level, self.device, self.cache_tiles = level, device, cache_tiles
        self._rgb = page.photometric == RGB
        self._tables = page.jpegtables
        self._cache: OrderedDict[int, torch.Tensor | None] = OrderedDict()
        # nvJPEG's hardware engine writes its outputs without waiting for the work queued on its stream, and
        # the caching allocator hands a decode the blocks the model is still reading (pytorch/vision#9606):
        # on an H200 that put NaNs into the features. Decoding on a stream of its own keeps its outputs in
        # blocks of that stream; the tiles are marked as used by the model's stream, so a tile evicted from
        # the cache is not reused before the model's kernels that read it have run.
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def _bytes(self, index: int) -> bytes | None:
        page = self.level.page
        offset, count = int(page.dataoffsets[index]), int(page.databytecounts[index])
        if count == 0:
            return None  # a sparse tile: background, white
        data = os.pread(self.level.fd, count, offset)
        if len(data) != count:
            raise TileReadError(f"{self.level.name}: tile {index} of page {page.index} is cut short ({len(data)} of "
                                f"{count} bytes at offset {offset}); the file is truncated")
        return jpeg_stream(data, self._tables, self._rgb)

    def _decode(self, data: list[torch.Tensor]) -> list[torch.Tensor]:
        if self._stream is None:
            return _decode_jpeg(data, self.device)
        user = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self._stream):
            decoded = _decode_jpeg(data, self.device)
        user.wait_stream(self._stream)
        for t in decoded:
            t.record_stream(user)
        return decoded

    def tiles(self, indices: list[int]) -> dict[int, torch.Tensor | None]:
        """(3, tile_h, tile_w) uint8 tiles on the device; the missing ones decoded in one batched call."""
        missing = [i for i in dict.fromkeys(indices) if i not in self._cache]
        streams = {i: self._bytes(i) for i in missing}
        todo = [i for i in missing if streams[i] is not None]
        if todo:
            data = [torch.frombuffer(bytearray(streams[i]), dtype=torch.uint8) for i in todo]
            try:
                decoded = self._decode(data)
            except RuntimeError as exc:
                raise TileReadError(f"{self.level.name}: tiles {todo[:4]}... of page {self.level.page.index} cannot "
                                    f"be decoded on {self.device} ({exc})") from exc
            shape = (3, self.level.tile_h, self.level.tile_w)
            for i, t in zip(todo, decoded):
                if tuple(t.shape) != shape:
                    raise TileReadError(f"{self.level.name}: tile {i} of page {self.level.page.index} decodes to "
                                        f"{tuple(t.shape)} on {self.device}, not the page's tile shape {shape}")
                self._cache[i] = t
        for i in missing:
            self._cache.setdefault(i, None)
        out = {}
        for i in indices:
            self._cache.move_to_end(i)
            out[i] = self._cache[i]
        while len(self._cache) > max(self.cache_tiles, len(out)):
            self._cache.popitem(last=False)
        return out

    def _tile_indices(self, x: int, y: int, size: int) -> list[int]:
        lv = self.level
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + size, lv.width), min(y + size, lv.height)
        if x0 >= x1 or y0 >= y1:
            return []
        return [ty * lv.tiles_across + tx for ty in range(y0 // lv.tile_h, (y1 - 1) // lv.tile_h + 1)
                for tx in range(x0 // lv.tile_w, (x1 - 1) // lv.tile_w + 1)]

    def regions(self, boxes: np.ndarray, size: int) -> torch.Tensor:
        """(N, size, size, 3) uint8 regions at level pixels ``boxes`` (N, 2: x, y), white outside the image
        and in empty tiles: the tiles they need stacked once, every pixel then picked in one gather, rather
        than a kernel launch per patch and tile."""
        lv = self.level
        if not len(boxes):
            return torch.empty((0, size, size, 3), dtype=torch.uint8, device=self.device)
        tiles = self.tiles([i for x, y in boxes for i in self._tile_indices(int(x), int(y), size)])
        held = [i for i, t in tiles.items() if t is not None]
        white = torch.full((1, 3, lv.tile_h, lv.tile_w), 255, dtype=torch.uint8, device=self.device)
        stack = torch.cat([white] + [tiles[i][None] for i in held])
        # Which stacked tile holds each (tile row, tile column) the boxes touch: 0 (white) where none does.
        px = boxes[:, :1] + np.arange(size)  # (N, size) level x of every output column
        py = boxes[:, 1:] + np.arange(size)
        inside_x, inside_y = (px >= 0) & (px < lv.width), (py >= 0) & (py < lv.height)
        px, py = px.clip(0, lv.width - 1), py.clip(0, lv.height - 1)
        tx, ty = px // lv.tile_w, py // lv.tile_h
        tx0, ty0 = int(tx.min()), int(ty.min())
        lut = np.zeros((int(ty.max()) - ty0 + 1, int(tx.max()) - tx0 + 1), np.int64)
        for k, i in enumerate(held, start=1):
            lut[i // lv.tiles_across - ty0, i % lv.tiles_across - tx0] = k
        on = {"device": self.device}
        lut_t = torch.from_numpy(lut).to(**on)
        col = torch.from_numpy(np.where(inside_x, tx - tx0, -1)).to(**on)  # (N, size); -1: outside the image
        row = torch.from_numpy(np.where(inside_y, ty - ty0, -1)).to(**on)
        which = lut_t[row.clamp(min=0)[:, :, None], col.clamp(min=0)[:, None, :]]
        which = which.masked_fill_((row[:, :, None] < 0) | (col[:, None, :] < 0), 0)  # (N, size, size)
        ox = torch.from_numpy(px - tx * lv.tile_w).to(**on)
        oy = torch.from_numpy(py - ty * lv.tile_h).to(**on)
        # Advanced indices around a slice: the result is (N, size, size, 3), channels last.
        return stack[which, :, oy[:, :, None], ox[:, None, :]]

    def patches(self, coords: np.ndarray, geom: Geometry, downsample: float) -> torch.Tensor:
        """(N, patch, patch, 3) uint8 on the device for level-0 ``coords``, read and resized as read_patch does."""
        boxes = np.array([(round(x / downsample), round(y / downsample)) for x, y in coords], np.int64).reshape(-1, 2)
        batch = self.regions(boxes, geom.read_size)
        if geom.read_size == geom.patch_size:
            return batch
        size = (geom.patch_size, geom.patch_size)
        batch = batch.permute(0, 3, 1, 2)
        if batch.device.type == "cpu":  # torch's uint8 kernel, as the CPU path
            batch = torch.nn.functional.interpolate(batch.contiguous(), size=size, mode="bilinear", antialias=True)
        else:
            batch = torch.nn.functional.interpolate(batch.float(), size=size, mode="bilinear", antialias=True)
            batch = batch.round_().clamp_(0, 255).to(torch.uint8)
        return batch.permute(0, 2, 3, 1).contiguous()

    def disagreement(self) -> tuple[str | None, str]:
        """Decode up to CHECK_TILES non-empty tiles from the middle of the level both ways; returns (a reason
        when they differ beyond the bounds, else None) and the figures."""
        counts = self.level.page.databytecounts
        middle = len(counts) // 2
        order = sorted(range(len(counts)), key=lambda i: abs(i - middle))
        picked = [i for i in order if counts[i]][:CHECK_TILES]
        if not picked:
            return "no tile holds data", ""
        device = self.tiles(picked)
        diffs = []
        for i in picked:
            cpu = self.level._tile(i)
            dev = device[i].permute(1, 2, 0).cpu().numpy()
            diffs.append(np.abs(dev.astype(np.int16) - cpu[:dev.shape[0], :dev.shape[1]].astype(np.int16)))
        d = np.concatenate([x.ravel() for x in diffs])
        figures = f"mean {d.mean():.3f}, max {int(d.max())} grey levels over {len(picked)} tiles"
        if d.mean() > MAX_MEAN_DIFF or d.max() > MAX_ABS_DIFF:
            return f"the device decoder differs from the CPU decoder ({figures})", figures
        return None, figures


class SlideDecoder:
    """The main process's pixels for one slide under ``--decoder gpu``. ``usable`` when the slide's check
    passes; otherwise the reader workers read it with the CPU decoder. ``note`` says which, and why, for the
    slide's provenance (``pixels``)."""

    def __init__(self, path: str, plan, device: torch.device):
        from featstore.tifftiles import TiffTiles

        geom = plan.geometry
        dims = tuple(tuple(d) for d in plan.info["level_dimensions"])
        self.geom, self.downsample = geom, float(plan.info["level_downsamples"][geom.level])
        self.rows_left = len(plan.coords)
        self._tiles = self._device = None
        try:  # a slide the device decoder cannot take is still read by the reader workers, on the CPU
            self._tiles = TiffTiles(Path(path), dims)
            self._device = DeviceTileDecoder(self._tiles.levels[geom.level], device)
            problem, figures = self._device.disagreement()
        except TileReadError as exc:
            problem, figures = str(exc), ""
        except (OSError, KeyError, ValueError, RuntimeError) as exc:
            problem, figures = f"the device decoder failed ({type(exc).__name__}: {exc})", ""
        which = "nvJPEG" if device.type == "cuda" else "libjpeg-turbo (torchvision)"
        self.usable = problem is None
        if self.usable:
            self.note = f"{which} on {device} (checked against tifffile/imagecodecs on this slide: {figures})"
        else:
            self.note = f"{plan.info['pixels']} in the reader workers: {problem}, so the device decoder was not used"
            self.close()

    def patches(self, coords) -> torch.Tensor:
        coords = np.asarray(coords)  # the loader hands numpy arrays on as tensors
        return self._device.patches(coords, self.geom, self.downsample)

    def close(self) -> None:
        self._device = None
        if self._tiles is not None:
            self._tiles.close()


class DeviceSlides(dict):
    """The slides whose pixels the main process decodes on the device, by slide index. Called as the reader
    pool's ``on_device``: checks a slide's device decoder, records the verdict in its plan's ``pixels``, and
    keeps the decoder when it passed."""

    def __init__(self, paths: dict[int, str], device: torch.device):
        super().__init__()
        self.paths, self.device = paths, device

    def __call__(self, idx: int, plan) -> bool:
        decoder = SlideDecoder(self.paths[idx], plan, self.device)
        plan.info["pixels"] = decoder.note
        if decoder.usable:
            self[idx] = decoder
            if plan.geometry.read_size != plan.geometry.patch_size:  # the device crops full tiles and resizes
                plan.info["downscale"] = "resize on the device (antialiased bilinear after a full decode)"
        return decoder.usable
