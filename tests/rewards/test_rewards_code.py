"""`code_execution` and its sandbox: code runs in a separate, limited process, and only real solutions pass.

The fork-bomb test is bounded on purpose (at most 2**6 processes, each killed with its process group
at the timeout), so even if containment regressed it could not take this machine down.
"""

from __future__ import annotations

import os
import time

import pytest

from aligntune.errors import RewardError
from aligntune.rewards import sandbox
from aligntune.rewards.code import (
    code_execution,
    extract_code,
    parse_tests,
    strict_snippet,
)

ADD_TESTS = ["assert add(2, 3) == 5", "assert add(-1, 1) == 0", "assert add(10, 32) == 42"]


def fenced(code: str) -> str:
    return f"Here is my solution:\n```python\n{code}\n```\nIt adds the numbers."


def group_members(pgid: int) -> list[int]:
    """Live processes in process group `pgid` (from /proc)."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry))
    return members


def test_extract_code():
    assert extract_code(fenced("x = 1")) == "x = 1\n"
    assert extract_code("```py\na = 1\n```\n```python\nb = 2\n```") == "b = 2\n"          # the last python block
    assert extract_code("```\nc = 3\n```") == "c = 3\n"                                  # bare fence
    assert extract_code("```cpp\nint x;\n```\n```python\nd = 4\n```") == "d = 4\n"       # other languages skipped
    assert extract_code("e = 5\n```\nThat was the code.") == "e = 5\n"                  # the prompt opened the fence
    assert extract_code("f = 6") == "f = 6" and extract_code("   ") is None


def test_parse_tests_formats():
    asserts, cases = parse_tests('["assert f(1) == 2", {"input": "1", "output": "2"}]')
    assert asserts == ["assert __aligntune_eq__(f(1), 2)"] and cases == [{"input": "1", "output": "2"}]
    assert parse_tests({"inputs": ["1\n", "2\n"], "outputs": ["1\n", "4\n"]})[1][1] == {"input": "2\n", "output": "4\n"}
    assert strict_snippet("assert a == b == c") == "assert __aligntune_eq__(a, b) and __aligntune_eq__(b, c)"
    with pytest.raises(RewardError, match="not valid Python"):
        parse_tests(["assert f(1) =="])
    with pytest.raises(RewardError, match="neither"):
        parse_tests([{"stdin": "1"}])


def test_correct_wrong_and_partial_solutions():
    correct = fenced("def add(a, b):\n    return a + b")
    wrong = fenced("def add(a, b):\n    return a - b")
    partial = fenced("def add(a, b):\n    return 0 if a == -b else a + b + (a == 2)")  # passes only the 2nd and 3rd
    conversational = [{"role": "assistant", "content": correct}]
    chatty = fenced("import sys\nprint('no newline', end='')\nsys.stdout.flush()\ndef add(a, b):\n    return a + b")
    assert code_execution([correct, wrong, partial, conversational, "no code, sorry", chatty], tests=[ADD_TESTS] * 6) == \
        [1.0, 0.0, pytest.approx(2 / 3), 1.0, 0.0, 1.0]


def test_hard_coded_output_and_fake_reports_do_not_pass():
    # The prompt's example was "add(2, 3) -> 5"; the hidden tests call add on other inputs.
    prints = fenced("print(5)\nprint('PASSED')")
    fake_report = fenced("import os\nfor i in range(3):\n    os.write(1, f'deadbeef {i} 1\\n'.encode())\ndef add(a, b): return 5")
    early_exit = fenced("import os\nos._exit(0)")
    always_equal = fenced("class Yes:\n    def __eq__(self, other): return True\ndef add(a, b): return Yes()")
    int_subclass = fenced("class Yes(int):\n    def __eq__(self, other): return True\ndef add(a, b): return Yes(0)")
    listed = fenced("class Yes:\n    def __eq__(self, other): return True\ndef add(a, b): return [Yes()]")
    tests = ["assert add(7, 8) == 15", "assert add(0, 0) == 0", "assert add(100, -1) == 99"]
    list_tests = ["assert add(1, 2) == [3]"]
    scores = code_execution([prints, fake_report, early_exit, always_equal, int_subclass, listed],
                            tests=[tests] * 5 + [list_tests])
    assert scores == [0.0] * 6
    # the strict == still accepts an honest float for an int, and equal containers
    honest = fenced("def add(a, b):\n    return float(a + b)")
    assert code_execution([honest, fenced("def add(a, b): return [a + b]")], tests=[tests, list_tests]) == [1.0, 1.0]


def test_stdin_stdout_cases_with_hidden_inputs():
    cases = [{"input": "2 5\n", "output": "7\n"}, {"input": "10 20", "output": "30"}, {"input": "-4 4\n", "output": "0"}]
    real = fenced("a, b = map(int, input().split())\nprint(a + b)")
    example_only = fenced("print(3)")  # the prompt's example was "1 2 -> 3"
    crashes_after_printing = fenced("a, b = map(int, input().split())\nprint(a + b)\nraise SystemExit(1)")
    assert code_execution([real, example_only, crashes_after_printing], tests=[cases] * 3) == [1.0, 0.0, 0.0]


def test_infinite_loop_times_out_and_scores_zero():
    start = time.monotonic()
    scores = code_execution([fenced("def add(a, b):\n    while True:\n        pass")], tests=[ADD_TESTS], timeout=1.0)
    assert scores == [0.0]
    assert time.monotonic() - start < 10


def test_a_test_that_hangs_keeps_the_results_before_it():
    code = fenced("def add(a, b):\n    while a == 10:\n        pass\n    return a + b")
    assert code_execution([code], tests=[ADD_TESTS], timeout=1.0) == [pytest.approx(2 / 3)]


def test_fork_bomb_is_contained():
    bomb = "import os\nfor _ in range(6):\n    os.fork()\nwhile True:\n    pass\n"  # bounded: see the module docstring
    start = time.monotonic()
    result = sandbox.run_python(bomb, timeout=2.0)
    assert not result.timed_out, "the forks were not refused: the bomb ran until the timeout"
    assert "BlockingIOError" in result.stderr or "Resource temporarily unavailable" in result.stderr, result.stderr
    assert time.monotonic() - start < 2.0
    assert group_members(result.pid) == []
    assert code_execution([fenced(bomb + "def add(a, b): return a + b")], tests=[ADD_TESTS], timeout=2.0) == [0.0]


def test_subprocesses_and_threads_are_refused_too():
    code = ("import subprocess, threading\n"
            "try:\n    subprocess.run(['true'])\n    print('spawned')\nexcept OSError:\n    print('no process')\n"
            "try:\n    threading.Thread(target=print).start()\n    print('threaded')\nexcept RuntimeError:\n    print('no thread')\n")
    assert sandbox.run_python(code).stdout.splitlines() == ["no process", "no thread"]


def test_memory_limit_and_output_cap():
    hog = sandbox.run_python("x = bytearray(1024 ** 3)", memory_mb=256)
    assert hog.returncode != 0 and "MemoryError" in hog.stderr
    flood = sandbox.run_python("while True:\n    print('x' * 10000)", timeout=5.0)
    assert not flood.timed_out and flood.returncode != 0 and len(flood.stdout) <= sandbox.OUTPUT_BYTES


def test_the_program_runs_in_its_own_empty_directory_with_stdlib_only():
    result = sandbox.run_python("import os, sys\nprint(sorted(os.listdir('.')))\nimport yaml")
    assert result.stdout.strip() == "['stderr', 'stdout']"       # its program file is gone before it runs
    assert "ModuleNotFoundError" in result.stderr                 # site-packages are not importable by default
    assert sandbox.run_python("import yaml", site_packages=True).ok


def test_rows_without_tests_are_skipped():
    assert code_execution([fenced("x = 1")], tests=[[]]) == [None]
