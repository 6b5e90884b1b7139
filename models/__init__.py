"""seqserve models."""
