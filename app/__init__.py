"""The memoir HTTP service: a thin FastAPI layer over memoir_core."""
