"""The first real error of a failed command, on the recorded vLLM 0.26.0 build log and on CMake, Python, nvcc
and git failures; and the one-line report run_command makes of it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from vllm_forge.core.errors import ForgeError
from vllm_forge.core.first_error import first_error, python_exception
from vllm_forge.core.plan import Command, run_command

RECORD = Path(__file__).resolve().parents[1] / "fixtures" / "gpu_real_build_0_26_0"
FLASHMLA_ERROR = ('/opt/torch/.venv/lib/python3.12/site-packages/torch/include/pybind11/pybind11.h:3649:2: error: '
                  '#error "This file should not be included when either TORCH_STABLE_ONLY or TORCH_TARGET_VERSION '
                  'is defined."')
# What follows a failed ninja build under vLLM's setup.py. Reconstructed: the recorded runs were stopped by
# `timeout` before ninja gave up, so their logs end in progress lines.
SETUP_PY_TAIL = """\
ninja: build stopped: subcommand failed.
Traceback (most recent call last):
  File "/tmp/vb/vllm-0.26.0/setup.py", line 354, in build_extensions
    subprocess.check_call(["cmake", *build_args], cwd=self.build_temp)
subprocess.CalledProcessError: Command '['cmake', '--build', '.', '-j=16', '--target=_C']' returned non-zero exit \
status 1.
"""


def recorded_lines() -> list[str]:
    return (RECORD / "build-wheel-part2-excerpt.log").read_text().splitlines()


def test_the_recorded_flashmla_failure_is_named_by_its_first_error_line():
    found = first_error(recorded_lines())
    assert found.kind == "compile"
    assert found.message == FLASHMLA_ERROR  # not the g++ command line right after FAILED:, nor a later error
    assert found.where == ("tmp/vb/cache/deps/flashmla@a8f794d1251cbfd88a5011445dd5582289c727e4/csrc/api/api.cpp "
                           "(_flashmla_C)")
    assert found.describe().startswith("first error, in tmp/vb/cache/deps/flashmla@")


def test_setup_py_s_traceback_after_the_failed_edge_does_not_win():
    found = first_error(recorded_lines() + SETUP_PY_TAIL.splitlines())
    assert found.message == FLASHMLA_ERROR


def test_warnings_and_progress_are_not_errors():
    lines = [line for line in recorded_lines() if "FAILED" not in line]  # the edge's output, without its FAILED
    found = first_error(lines[lines.index(next(x for x in lines if x.startswith("[2/322]"))):])
    assert found.kind == "last-line"  # nvcc's `warning #2908-D:` lines, a `Remark:`, [k/N] lines: no error


def test_a_failed_edge_without_an_error_line_is_still_named():
    found = first_error(["[1/3] Building CXX object CMakeFiles/_C.dir/csrc/x.cpp.o",
                         "FAILED: CMakeFiles/_C.dir/csrc/x.cpp.o ", "/usr/bin/c++ -Werror=foo: -c x.cpp",
                         "Killed signal terminated program cc1plus", "ninja: build stopped: subcommand failed."])
    assert (found.where, found.kind) == ("csrc/x.cpp (_C)", "compile")
    assert "no error line" in found.message


@pytest.mark.parametrize("error", [
    "/src/csrc/add_one.cu(3): error: identifier \"nope\" is undefined",
    "/src/csrc/add_one.cu:3:2: error: #error \"planted\"",
    "x.cpp:1:10: fatal error: missing.h: No such file or directory",
    "nvcc fatal   : Unsupported gpu architecture 'compute_999'",
    "/usr/bin/ld: x.o: in function `f': undefined reference to `g'",
    "/src/x.cu(12): error #20014-D: calling a __host__ function from a __device__ function is not allowed",
])
def test_compiler_error_formats_inside_a_failed_edge(error):
    found = first_error(["[2/5] Building CUDA object CMakeFiles/_C.dir/csrc/add_one.cu.o",
                         "FAILED: [code=1] CMakeFiles/_C.dir/csrc/add_one.cu.o", "/usr/local/bin/nvcc -c add_one.cu",
                         "In file included from x.h:1,", error, "1 error detected in the compilation"])
    assert (found.message, found.where) == (error, "csrc/add_one.cu (_C)")


def test_cmake_error_with_its_message_unwrapped():
    found = first_error(["-- The CUDA compiler identification is NVIDIA 13.0.88",  # the miniature's, as CMake 4.4
                         "CMake Error at CMakeLists.txt:21 (message):",             # prints it
                         "  TORCH_CUDA_ARCH_LIST entry 'not-an-arch' is not of the form 12.0, 9.0a or",
                         "  12.0+PTX", "", "", "-- Configuring incomplete, errors occurred!",
                         *SETUP_PY_TAIL.splitlines()[1:]])
    assert (found.kind, found.where) == ("cmake", "CMakeLists.txt:21")
    assert found.message == "TORCH_CUDA_ARCH_LIST entry 'not-an-arch' is not of the form 12.0, 9.0a or 12.0+PTX"
    cut_short = first_error(["CMake Error at cmake/utils.cmake:7 (message):", "  first part"])
    assert cut_short.message == "first part"
    one_line = first_error(["CMake Error: The source directory \"/x\" does not exist."])
    assert one_line.message == 'CMake Error: The source directory "/x" does not exist.'


def test_python_exception_of_the_first_traceback():
    lines = ["running build_ext", "Traceback (most recent call last):", '  File "setup.py", line 3, in <module>',
             "    import torch", "ModuleNotFoundError: No module named 'torch'", "",
             "During handling of the above exception, another exception occurred:", "",
             "Traceback (most recent call last):", '  File "setup.py", line 5', "RuntimeError: no torch"]
    found = first_error(lines)
    assert (found.kind, found.message) == ("python", "ModuleNotFoundError: No module named 'torch'")
    assert python_exception(lines) == "ModuleNotFoundError: No module named 'torch'"
    assert python_exception(["Traceback (most recent call last):", "  File x", "KeyboardInterrupt"]) == \
        "KeyboardInterrupt"


def test_git_s_own_error_line_and_the_last_line_fallback():
    found = first_error(["Cloning into '/tmp/x'...", "fatal: cannot copy 'a' to 'b': No space left on device",
                         "and the repository exists."])
    assert (found.kind, found.message) == ("tool", "fatal: cannot copy 'a' to 'b': No space left on device")
    assert first_error(["one", "Killed", ""]).describe() == "its last line: Killed"
    assert first_error([]) is None


def test_lines_are_capped():
    found = first_error(["FAILED: CMakeFiles/_C.dir/a.cu.o", "cmd", "a.cu(1): error: " + "x" * 1000])
    assert len(found.message) == 300


def test_run_command_names_the_first_error_and_the_log(tmp_path):
    script = tmp_path / "build.py"
    script.write_text("import sys\nprint('[1/2] Building CUDA object CMakeFiles/_C.dir/csrc/k.cu.o')\n"
                      "print('FAILED: CMakeFiles/_C.dir/csrc/k.cu.o')\nprint('nvcc -c k.cu')\n"
                      "print('k.cu(7): error: planted')\nprint('ninja: build stopped: subcommand failed.')\n"
                      "raise SystemExit('subprocess.CalledProcessError: cut-off cmake command line')\n")
    log = tmp_path / "build.log"
    with pytest.raises(ForgeError) as caught:
        run_command(Command([sys.executable, str(script)]), log_path=log)
    message = str(caught.value)
    assert "failed with exit code 1; first error, in csrc/k.cu (_C): k.cu(7): error: planted" in message
    assert f"(full log: {log})" in message
    assert "read the log" not in message and "cut-off" not in message
    assert message.endswith("Fix: fix that compile error (in the source, a patch, or the dependency it names), then "
                            "run the same command again: ninja compiles only what is not built yet.")
    assert "k.cu(7): error: planted" in log.read_text()  # the log keeps everything, as before


def test_run_command_without_streaming_points_at_the_terminal():
    with pytest.raises(ForgeError) as caught:
        run_command(Command([sys.executable, "-c", "raise SystemExit(3)"]))
    assert str(caught.value).startswith("`") and "failed with exit code 3. Fix: fix what it says" in str(caught.value)
