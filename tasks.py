"""vllm-forge tasks: build vLLM for the GPU you name, bake a slim image, prove it runs.

Every task is thin: parse flags, resolve the BuildConfig, call a module in scripts/, print with rich.
"""

from __future__ import annotations

# ---- core pipeline (config, clone, use-existing-torch, build-wheel, check-size, plan, demo) ----
# ---- end core pipeline ----

# ---- audit (issue 3) ----
# ---- end audit ----

# ---- doctor / nccl (issue 5) ----
# ---- end doctor / nccl ----

# ---- image (issue 9: bake, inspect, check-size --image, serve, stop) ----
# ---- end image ----

# ---- vLLM tree / offline deps (issue 10) ----
# ---- end vLLM tree ----
