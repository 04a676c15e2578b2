"""featstore: frozen patch embeddings of whole-slide images, with provenance, in Zarr v3 or HDF5."""

from featstore.store import SCHEMA_VERSION, ExpressionTable, LabelTable, SlideFeatures, Store, StoreError, open, writing

__version__ = "0.1.0"
__all__ = ["SCHEMA_VERSION", "ExpressionTable", "LabelTable", "SlideFeatures", "Store", "StoreError", "open",
           "writing", "__version__"]
