"""localai-supervisor: keeps a local LLM server (LocalAI or llama-server) alive and correct."""

__version__ = "0.1.0"
