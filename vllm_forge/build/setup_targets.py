"""Run a checkout's ``setup.py`` with only some of its CMake extensions: ``--targets`` of build-wheel.

    PYTHONPATH=/path/to/vllm-forge python -m vllm_forge.build.setup_targets \\
        --targets _C_stable_libtorch,_moe_C_stable_libtorch --record build-targets.json \\
        -- bdist_wheel --dist-dir=... --py-limited-api=cp38

run in the checkout (``-m`` puts the working directory first on ``sys.path``, as ``python setup.py`` does),
is ``python setup.py bdist_wheel ...`` except that ``setuptools.setup`` receives only
the extensions whose CMake target (vLLM's ``target_name``: the module name without ``vllm.`` and
``vllm_flash_attn.``) is listed. vLLM's ``cmake_build_ext`` then configures once and asks CMake for
those targets alone. ``--record`` writes which extensions were kept and which left out, as setup.py
really declared them on this machine, for the wheel's build info.

Standard library only: it runs inside the Docker build too. It is the one place the tool wraps a
library function (``setuptools.setup``), and it only filters the ``ext_modules`` argument.
"""

from __future__ import annotations

import json
import runpy
import sys


def target_name(module: str) -> str:
    return module.removeprefix("vllm.").removeprefix("vllm_flash_attn.")


def main(argv: list[str]) -> int:
    if "--" not in argv:
        print("usage: python -m vllm_forge.build.setup_targets --targets A,B [--record FILE] -- SETUP_ARGS...",
              file=sys.stderr)
        return 2
    split = argv.index("--")
    own, setup_args = argv[:split], argv[split + 1:]
    wanted: list[str] = []
    record = ""
    i = 0
    while i < len(own):
        if own[i] == "--targets" and i + 1 < len(own):
            wanted += [t for t in own[i + 1].split(",") if t]
            i += 2
        elif own[i] == "--record" and i + 1 < len(own):
            record = own[i + 1]
            i += 2
        else:
            print(f"setup_targets.py: unknown argument {own[i]!r}", file=sys.stderr)
            return 2

    import setuptools

    original = setuptools.setup

    def setup(*args, **kwargs):
        declared = list(kwargs.get("ext_modules") or [])
        kept = [ext for ext in declared if target_name(ext.name) in wanted]
        missing = sorted(set(wanted) - {target_name(ext.name) for ext in declared})
        if missing:
            sys.exit(f"setup_targets.py: this setup.py declares no extension for {', '.join(missing)} here "
                     f"(it declares {', '.join(target_name(e.name) for e in declared) or 'none'})")
        if record:
            with open(record, "w") as handle:
                json.dump({"requested": wanted, "built": [target_name(e.name) for e in kept],
                           "left_out": [target_name(e.name) for e in declared if e not in kept]}, handle, indent=2)
        kwargs["ext_modules"] = kept
        return original(*args, **kwargs)

    setuptools.setup = setup
    # As `python setup.py` would have it: the script named setup.py (-m already put the checkout first on the path).
    sys.argv = ["setup.py", *setup_args]
    runpy.run_path("setup.py", run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
