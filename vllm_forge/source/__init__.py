"""The vLLM checkout: clone, use-existing-torch, its facts, local patches, what its version reads and
accepts, its git metadata made credential-free, the embedded miniature."""
