"""retrieval_service: the knowledge base behind support.v1.RetrievalService (ChromaDB + offline MiniLM)."""
