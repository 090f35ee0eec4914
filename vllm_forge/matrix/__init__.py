"""CUDA x arch x mirror matrices for nox, the compiler check, the build scripts.benchmarks."""
