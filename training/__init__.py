"""seqserve training."""
