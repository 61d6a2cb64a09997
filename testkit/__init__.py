"""Test doubles that sit at the outer boundaries (the LLM over HTTP), shared by tests, benchmarks and eval."""
