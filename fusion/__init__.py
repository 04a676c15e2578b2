"""fusion: leakage-free cross-validation of gene, image and fusion heads on a featstore store."""
