"""Semantic search over a handful of documents, with the async producers (see ``app``)."""
