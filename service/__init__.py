"""seqserve service."""
