"""The slim image: the docker client, Dockerfile parsing, the bake request and its plan, the build
context, running a bake, inspecting and sizing images, the runtime's JIT toolchain; recipes, mirror
profiles, the TEST-ONLY stand-in bases, remote builders."""
