"""vllm-forge logic: importable modules that also run standalone (``python scripts/<x>.py``).

Everything here is stdlib-first so the Docker build can run it inside the image; rich output
belongs to ``tasks.py``.
"""

__version__ = "0.1.0"
