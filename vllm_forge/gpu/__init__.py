"""CUDA releases, archs, GPUs and their tables; the CUDA toolchain; compile parallelism."""
