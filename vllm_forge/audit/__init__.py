"""Will this binary run on that GPU: the CUDA fat-binary reader, the verdicts, which extensions a vLLM
imports at start-up. Pure Python (stdlib + pyelftools): it runs inside the image's build stage too."""
