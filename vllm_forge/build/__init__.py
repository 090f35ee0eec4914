"""Building a wheel: the preflight, the plan and run, compile caches and the build farm, long-build
progress and estimates, the size check."""
