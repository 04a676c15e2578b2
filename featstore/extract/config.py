"""What a run is given and what it reports: the config whose hash names a feature set, slide specs, the report."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from featstore.encoders import Encoder

# Bump when tissue detection, tiling or preprocessing changes what a given config produces.
PIPELINE_VERSION = 2
EXIT_OK, EXIT_SOME_FAILED = 0, 2

EventHandler = Callable[[dict], None]
DECODERS = ("auto", "cpu", "gpu", "openslide")
DOWNSCALES = ("dct", "resize")


@dataclass(frozen=True)
class ExtractConfig:
    """Everything that determines the features; its hash names the feature set's identity."""

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
    # Run choices, not part of what the features are: kept out of the feature set's identity (RUN_ONLY).
    # downscale: how a patch read finer than the target comes down to patch_size: dct (JPEG tiles decoded at
    # 1/2 or 1/4 by the scaled IDCT where a per-slide check passes, then a 3-tap filter that matches the
    # resize, featstore.slides.like_bilinear; else resize) or resize (full decode, antialiased bilinear).
    # The two differ by about a grey level, as the decoders do; each slide's provenance says which.
    downscale: str = "dct"
    # decoder: cpu (tiles decoded by tifffile in the reader workers; OpenSlide where a slide cannot be read
    # directly), gpu (JPEG tiles decoded in batches on the run's device, featstore.extract.device_decode),
    # openslide (every pixel through OpenSlide), auto (cpu: measured faster than gpu on an H200). Each slide's provenance says
    # which decoder gave its pixels; the direct and device decoders are checked against a reference per slide.
    decoder: str = "auto"
    max_patches: int = 2_000_000  # per slide, counted on the grid before the tissue mask

    def __post_init__(self) -> None:
        if self.target_mpp <= 0:
            raise ValueError(f"target_mpp must be > 0, got {self.target_mpp}")
        if self.patch_size < 16:
            raise ValueError(f"patch_size must be at least 16, got {self.patch_size}")
        if not 0 <= self.min_tissue <= 1:
            raise ValueError(f"min_tissue must be in [0, 1], got {self.min_tissue}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {self.decoder!r}")
        if self.downscale not in DOWNSCALES:
            raise ValueError(f"downscale must be one of {', '.join(DOWNSCALES)}, got {self.downscale!r}")
        if self.dtype not in ("float16", "float32"):
            raise ValueError(f"dtype must be float16 or float32, got {self.dtype!r}")


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


RUN_ONLY = ("max_patches", "decoder", "downscale")


def feature_set_config(cfg: ExtractConfig, encoder: Encoder, precision: str) -> dict:
    identity = {k: v for k, v in asdict(cfg).items() if k not in RUN_ONLY}
    return {**identity, "weights": encoder.weights_id, "precision": precision, "dim": encoder.dim,
            "mean": list(encoder.mean), "std": list(encoder.std), "pipeline_version": PIPELINE_VERSION,
            "source": "extract"}
