"""What a run is given and what it reports: the config whose hash names a feature set, slide specs, the report."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

from featstore.encoders import Encoder

# Bump when tissue detection, tiling or preprocessing changes what a given config produces.
PIPELINE_VERSION = 2
EXIT_OK, EXIT_SOME_FAILED = 0, 2

EventHandler = Callable[[dict], None]
DECODERS = ("auto", "cpu", "gpu", "openslide")
DOWNSCALES = ("dct", "resize")


@dataclass(frozen=True)
class ExtractConfig:
    """What the features are: its hash names the feature set's identity (how a run goes is :class:`RunConfig`)."""

    encoder: str = "resnet50"
    weights: str = "random"
    seed: int = 0
    target_mpp: float = 0.5
    patch_size: int = 224
    min_tissue: float = 0.25
    precision: str = "auto"
    dtype: str = "float16"
    thumbnail_side: int = 1024
    allow_objective_mpp: bool = True

    def __post_init__(self) -> None:
        if self.target_mpp <= 0:
            raise ValueError(f"target_mpp must be > 0, got {self.target_mpp}")
        if self.patch_size < 16:
            raise ValueError(f"patch_size must be at least 16, got {self.patch_size}")
        if not 0 <= self.min_tissue <= 1:
            raise ValueError(f"min_tissue must be in [0, 1], got {self.min_tissue}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        if self.dtype not in ("float16", "float32"):
            raise ValueError(f"dtype must be float16 or float32, got {self.dtype!r}")


@dataclass(frozen=True)
class RunConfig:
    """How a run goes, not what the features are: none of it is in the feature set's identity. Its "auto"
    choices are resolved once (:meth:`resolved`), and each slide's provenance records the resolved run.

    decoder: cpu (tiles decoded by tifffile in the reader workers; OpenSlide where a slide cannot be read
    directly), gpu (JPEG tiles decoded in batches on the run's device, featstore.extract.device_decode),
    openslide (every pixel through OpenSlide), auto (cpu: measured faster than gpu on an H200). The direct
    and device decoders are checked against a reference per slide.
    downscale: how a patch read finer than the target comes down to patch_size: dct (RGB-stored JPEG tiles
    decoded at 1/2 or 1/4 by the scaled IDCT where a per-slide check passes, then a 3-tap filter that matches
    the resize, featstore.resample.like_bilinear; else resize) or resize (full decode, antialiased bilinear).
    The two differ by about a grey level, as the decoders do; each slide's provenance says which.
    max_patches: per slide, counted on the grid before the tissue mask (a declared size no real slide has).
    devices: "all" or "0,1,...": one Dask worker per GPU; scheduler/dask_workers: one Dask task per slide.
    """

    device: str = "auto"
    devices: str | None = None
    decoder: str = "auto"
    downscale: str = "dct"
    batch_size: int = 64
    num_workers: int | None = None  # reader processes; None: the cores this process may use - 1, at most 12
    max_patches: int = 2_000_000
    scheduler: str | None = None
    dask_workers: int | None = None

    def __post_init__(self) -> None:
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {self.decoder!r}")
        if self.downscale not in DOWNSCALES:
            raise ValueError(f"downscale must be one of {', '.join(DOWNSCALES)}, got {self.downscale!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.num_workers is not None and self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.max_patches < 1:
            raise ValueError(f"max_patches must be >= 1, got {self.max_patches}")

    @property
    def distributed(self) -> bool:
        return self.scheduler is not None or self.dask_workers is not None or bool(self.devices)

    def resolved(self, device: str) -> RunConfig:
        """This run with its choices made: the device found, the decoder (auto: cpu, also on a GPU machine: the
        CPU decoder in the reader workers measured faster end to end than nvJPEG, which also cannot decode
        Aperio's RGB tiles; benchmarks/RESULTS.md, gpu_check) and the number of reader workers."""
        return replace(self, device=device, decoder="cpu" if self.decoder == "auto" else self.decoder,
                       num_workers=default_workers() if self.num_workers is None else self.num_workers)


def default_workers() -> int:
    # The cores this process may use (a SLURM or container allocation), not all the host's.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2
    return max(1, min(12, cores - 1))


@dataclass(frozen=True)
class SlideSpec:
    path: str
    slide_id: str
    patient_id: str
    mpp: float | None = None


@dataclass
class ExtractReport:
    feature_set: str
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    patches: int = 0
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return EXIT_SOME_FAILED if self.failed else EXIT_OK

    def merge(self, other: ExtractReport) -> None:
        self.done += other.done
        self.skipped += other.skipped
        self.failed.update(other.failed)
        self.patches += other.patches


def feature_set_config(cfg: ExtractConfig, encoder: Encoder, precision: str) -> dict:
    return {**asdict(cfg), "weights": encoder.weights_id, "precision": precision, "dim": encoder.dim,
            "mean": list(encoder.mean), "std": list(encoder.std), "pipeline_version": PIPELINE_VERSION,
            "source": "extract"}
