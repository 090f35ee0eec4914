"""tasks.py wraps one private invoke method (ParseMachine.complete_context) for optional positionals.

invoke is pinned in requirements.txt; these tests fail when the pin moves or the wrapped method changes,
so the wrapper is re-checked by whoever upgrades invoke instead of breaking quietly.
"""

from __future__ import annotations

import hashlib
import inspect
import re

import invoke
from invoke.parser.parser import ParseMachine

# sha256 of `inspect.getsource(ParseMachine.complete_context)` in invoke 3.0.3, before tasks.py wraps it.
COMPLETE_CONTEXT_SHA256 = "fba382f0b1987dfd88c82aaf45ecd0adc3eee9475db229cd17d3da554bfd1c1f"


def test_invoke_is_the_pinned_version(repo_root):
    pin = re.search(r"^invoke==(\S+)$", (repo_root / "requirements.txt").read_text(), re.M)
    assert pin, "requirements.txt must pin invoke exactly"
    assert invoke.__version__ == pin.group(1)


def test_the_wrapped_method_is_the_one_checked():
    method = ParseMachine.complete_context
    original = method.__defaults__[0] if getattr(method, "forge_wrapped", False) else method
    assert hashlib.sha256(inspect.getsource(original).encode()).hexdigest() == COMPLETE_CONTEXT_SHA256


def test_no_other_invoke_internal_is_patched(repo_root):
    """Cast errors (`--port abc`) and INVOKE_FORGE_* numbers go through public mechanisms now."""
    text = (repo_root / "tasks.py").read_text()
    assert "Argument.set_value" not in text and "Environment._path_set" not in text
    assert text.count("ParseMachine.complete_context =") == 1
