"""The stand-in images' build shows progress while debootstrap runs for minutes, and fails naming its error."""

from __future__ import annotations

import time

import pytest

from vllm_forge.core.errors import ForgeError
from vllm_forge.image import standin_images


def test_output_reaches_the_caller_while_the_command_runs():
    seen: list[tuple[float, str]] = []
    start = time.monotonic()
    standin_images._run(["sh", "-c", "echo 'I: Retrieving libc6'; sleep 2.5; echo 'I: Base system installed'"],
                        log=lambda line: None, on_output=lambda line: seen.append((time.monotonic() - start, line)))
    ended = time.monotonic() - start
    assert [line for _, line in seen] == ["I: Retrieving libc6", "I: Base system installed"]
    assert seen[0][0] < ended - 1.0  # the first line came 2.5 s before the command ended, not with the rest


def test_a_failure_names_its_first_real_error_and_a_fix():
    with pytest.raises(ForgeError) as err:
        standin_images._run(["sh", "-c", "echo 'I: Retrieving InRelease'; echo 'E: Failed getting release file';"
                             "echo 'I: cleaning up'; exit 1"], log=lambda line: None)
    assert str(err.value).startswith("`sh -c echo 'I: Retrieving InRelease'; echo 'E: Failed getting release file';")
    assert "(exit 1): E: Failed getting release file. Fix: the stand-in images need root, debootstrap" in str(err.value)
    assert "read the output" not in str(err.value)


def test_a_terminal_gets_one_progress_line_per_interval():
    printed: list[str] = []
    show = standin_images.every(0.3, printed.append)
    for number in range(5):
        show(f"I: Unpacking package-{number}")
    time.sleep(0.35)
    show("I: Configuring libc6")
    assert [line.split("s ", 1)[1] for line in printed] == ["I: Unpacking package-0", "I: Configuring libc6"]
