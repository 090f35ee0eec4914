"""vllm-forge: build vLLM from source for the GPU you name, bake a slim image, prove it runs.

The package is laid out in wings, one concern each; ``LAYERS`` orders them, lowest first:

- ``core``: errors, BuildConfig and its layers, commands as data (``plan``), credentials and the other
  hostile-input rules, git and file operations that never follow a link, the cache, locks, this package;
- ``gpu``: CUDA releases, archs and GPUs (``compat``'s tables), the CUDA toolchain, compile parallelism;
- ``audit``: will a binary run on a GPU (the fat-binary reader, the verdicts, a vLLM's start-up imports);
  ``source``: the vLLM checkout (clone, use-existing-torch, its facts, patches, its credential-free git);
- ``deps``: the checkout's CMake git dependencies (fetched, imported);
- ``build``: a wheel (preflight, plan and run, compile caches, the farm, long-build progress, size);
- ``image``, ``serve``, ``nccl``, ``matrix``, ``report``: the slim image, serving it, NCCL diagnosis, nox's
  matrices and benchmarks, run records and figures;
- ``pipeline`` (one module): Settings, the Steps and the chains every task runs;
- ``cli``: the invoke tasks (tasks.py, at the repository's root).

A module imports from its own wing and from lower layers only, never upward (not even inside a function);
wings of one layer may import each other where no cycle results. tests/unit/test_layering.py holds this.

Stdlib-first: the image's build stage runs ``python3 -m vllm_forge.<wing>.<module>`` for what it needs
(``image.staging`` stages those modules and what they import); rich output belongs to ``cli``.
"""

__version__ = "0.1.0"

LAYERS = (
    ("core",),
    ("gpu",),
    ("audit", "source"),
    ("deps",),
    ("build",),
    ("image", "serve", "nccl", "matrix", "report"),
    ("pipeline",),
    ("cli",),
)
