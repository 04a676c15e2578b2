"""The one-time pass: slides -> tissue -> patch grid -> frozen encoder -> feature store.

Reading and decoding run in DataLoader worker processes (each taking the next unclaimed slide, largest
first, and sharing the rest of its slide with workers that have nothing left to claim), overlapped with
batched inference in the main process; batches span slide boundaries so the accelerator never waits
for a small slide; a background thread owns every store write. Queues are bounded, so memory stays
flat however large a slide is. Each slide is committed atomically once all its rows are written; a
slide that fails is recorded with its reason and the others go on.
"""

from featstore.extract.config import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    PIPELINE_VERSION,
    EventHandler,
    ExtractConfig,
    ExtractReport,
    RunConfig,
    SlideSpec,
    feature_set_config,
)
from featstore.extract.embed import PatchEmbedder, resolve_device, resolve_precision
from featstore.extract.inputs import find_slides, shard
from featstore.extract.plan import SlidePlan, plan_slide, read_patch
from featstore.extract.pool import PatchReader, patch_loader
from featstore.extract.run import extract

__all__ = ["EXIT_OK", "EXIT_SOME_FAILED", "PIPELINE_VERSION", "EventHandler", "ExtractConfig", "ExtractReport",
           "PatchEmbedder", "PatchReader", "RunConfig", "SlidePlan", "SlideSpec", "extract", "feature_set_config",
           "find_slides", "patch_loader", "plan_slide", "read_patch", "resolve_device", "resolve_precision", "shard"]
