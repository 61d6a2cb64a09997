"""The outside world of retrieval_service: the embedding model and the Chroma vector store."""
