"""`code_execution`: the fraction of a row's hidden tests that the completion's Python code passes.

The code is run by `aligntune.rewards.sandbox` in a separate, limited process (timeout, memory,
no process creation), never in the trainer's. This is execution-based reward as in CodeRL (Le et al.
2022, arXiv:2207.01780) and the unit-test rewards of DeepSeek-R1 (arXiv:2501.12948).

The code: the last ```python (or ```py) fenced block of the completion; else the last bare ```
block; else the text before the first ``` (all of it when there is none: a prompt may end with
"```python", so the completion is code followed by a closing fence).

The tests: a dataset column `tests`, one value per row: a list (or its JSON string) whose items are

- assert snippets, e.g. `"assert add(2, 3) == 5"`. All of a row's snippets run in one process,
  after the code (loaded as module `solution`, so an `if __name__ == "__main__":` block does not
  run), each in its own copy of the code's namespace. A snippet passes when it raises nothing;
  the harness reports each result with a random token on a private file descriptor while the
  code's own stdout goes to /dev/null, so printing "PASSED" earns nothing. Every `==` in a snippet
  is checked strictly: the two sides must have the same type (numbers may mix int/float/numpy), and
  lists, tuples and dicts are compared item by item, so an object whose `__eq__` always says True
  does not pass.
- input/output cases, e.g. `{"input": "2 3\\n", "output": "5\\n"}`: the code runs as `__main__` with
  `input` on stdin, one process per case, and passes when it exits 0 and its stdout equals `output`
  (trailing whitespace of each line and trailing blank lines ignored). The APPS layout
  `{"inputs": [...], "outputs": [...]}` is accepted too.

Keep the tests hidden (not in the prompt): a completion that prints the prompt's example output, or
hard-codes the example's answer, then fails them. Scores: passed / total; 0.0 without code or when
the code fails to load; a timeout fails the tests not yet reported (each assert snippet is reported
as it finishes); None for a row without tests (skipped by TRL).

Arguments (rewards.<name>.args): `timeout` (seconds per process: per row for assert snippets, per
case for input/output cases; default 5), `memory_mb` (address-space limit, default 512),
`site_packages` (let the code import installed packages, default false: standard library only,
faster start), `workers` (processes run in parallel, default the CPU count).
"""

from __future__ import annotations

import ast
import json
import os
import re
import secrets
from concurrent.futures import ThreadPoolExecutor

from aligntune.errors import RewardError
from aligntune.rewards import sandbox
from aligntune.rewards.text import completion_text

_FENCE = re.compile(r"```([\w+-]*)[ \t]*\n(.*?)```", re.DOTALL)

_ASSERT_HARNESS = r'''
import numbers, os, sys, traceback
_NUMERIC = ("builtins", "numpy", "fractions", "decimal")


def _strict_eq(a, b, _type=type, _isinstance=isinstance, _len=len, _all=all, _zip=zip, _Number=numbers.Number):
    ta, tb = _type(a), _type(b)
    if _isinstance(a, _Number) and _isinstance(b, _Number) and ta.__module__ in _NUMERIC and tb.__module__ in _NUMERIC:
        return bool(a == b)
    if ta is not tb:
        return False
    if ta is list or ta is tuple:
        return _len(a) == _len(b) and _all(_strict_eq(x, y) for x, y in _zip(a, b))
    if ta is dict:
        return a.keys() == b.keys() and _all(_strict_eq(a[k], b[k]) for k in a)
    return bool(a == b)


def _main(token, solution, tests):
    report = os.dup(1)  # results go here; the code's stdout goes to /dev/null
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    namespace = {"__name__": "solution", "__builtins__": __builtins__}
    try:
        exec(compile(solution, "solution.py", "exec"), namespace)
        loaded = True
    except BaseException:
        traceback.print_exc()
        loaded = False
    for i, test in enumerate(tests):
        passed = False
        if loaded:
            scope = dict(namespace)
            scope["__aligntune_eq__"] = _strict_eq
            try:
                exec(compile(test, f"test_{i}", "exec"), scope)
                passed = True
            except BaseException:
                traceback.print_exc()
        os.write(report, f"{token} {i} {int(passed)}\n".encode())
    os._exit(0)
'''


def extract_code(text: str) -> str | None:
    """The completion's Python code, by the rules in the module docstring; None if there is none."""
    blocks = _FENCE.findall(text)
    python = [body for lang, body in blocks if lang.lower() in ("python", "py", "python3")]
    bare = [body for lang, body in blocks if not lang]
    code = (python or bare)[-1] if python or bare else text.split("```", 1)[0]
    return code if code.strip() else None


class _StrictEq(ast.NodeTransformer):
    """`a == b` -> `__aligntune_eq__(a, b)` (chains become `and`s), so results are compared strictly."""

    def visit_Compare(self, node: ast.Compare):
        self.generic_visit(node)
        if not all(isinstance(op, ast.Eq) for op in node.ops):
            return node
        sides = [node.left, *node.comparators]
        calls = [ast.Call(ast.Name("__aligntune_eq__", ast.Load()), [x, y], []) for x, y in zip(sides, sides[1:])]
        return calls[0] if len(calls) == 1 else ast.BoolOp(ast.And(), calls)


def strict_snippet(test: str) -> str:
    """An assert snippet with every `==` made strict; RewardError if it is not valid Python."""
    try:
        tree = ast.parse(test)
    except SyntaxError as exc:
        raise RewardError(f"The code_execution test {test!r} is not valid Python ({exc.msg}).",
                          "Fix the dataset's `tests` column: each assert test is a Python snippet.") from exc
    return ast.unparse(ast.fix_missing_locations(_StrictEq().visit(tree)))


def parse_tests(value) -> tuple[list[str], list[dict]]:
    """(assert snippets, input/output cases) of one row's `tests` value (see the module docstring)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = [value]  # a single assert snippet
    if isinstance(value, dict) and "inputs" in value and "outputs" in value:
        value = [{"input": i, "output": o} for i, o in zip(value["inputs"], value["outputs"], strict=True)]
    if not isinstance(value, (list, tuple)):
        raise RewardError(f"The code_execution reward's `tests` value {value!r} is not a list.",
                          "Give each row a list of assert snippets or {input, output} cases (or its JSON string).")
    asserts, cases = [], []
    for item in value:
        if isinstance(item, str):
            asserts.append(strict_snippet(item))
        elif isinstance(item, dict) and "input" in item and "output" in item:
            cases.append({"input": str(item["input"]), "output": str(item["output"])})
        else:
            raise RewardError(f"The code_execution test {item!r} is neither an assert snippet nor an {{input, output}} case.",
                              "Fix the dataset's `tests` column.")
    return asserts, cases


def _same_output(actual: str, expected: str) -> bool:
    norm = lambda s: "\n".join(line.rstrip() for line in s.strip("\n").splitlines()).rstrip()
    return norm(actual) == norm(expected)


def run_asserts(code: str, asserts: list[str], timeout: float, memory_mb: int, site_packages: bool) -> int:
    """How many assert snippets pass after `code`, run together in one sandboxed process."""
    token = secrets.token_hex(16)
    program = f"{_ASSERT_HARNESS}\n_main({token!r}, {code!r}, {asserts!r})\n"
    result = sandbox.run_python(program, timeout=timeout, memory_mb=memory_mb, site_packages=site_packages)
    passed = set()
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == token and parts[2] == "1" and parts[1].isdigit():
            passed.add(int(parts[1]))
    return len(passed & set(range(len(asserts))))


def run_case(code: str, case: dict, timeout: float, memory_mb: int, site_packages: bool) -> int:
    """1 if `code` run as a program maps the case's input to its output, else 0."""
    result = sandbox.run_python(code, stdin=case["input"], timeout=timeout, memory_mb=memory_mb, site_packages=site_packages)
    return int(result.ok and _same_output(result.stdout, case["output"]))


def code_execution(completions: list, tests: list, timeout: float = 5.0, memory_mb: int = 512,
                   site_packages: bool = False, workers: int | None = None, **kwargs) -> list[float | None]:
    """Fraction of the row's hidden `tests` (assert snippets or stdin/stdout cases) the completion's code passes, sandboxed."""
    sandbox.check_containment()
    rows = [parse_tests(t) for t in tests]
    if len(rows) != len(completions):
        raise RewardError(f"code_execution got {len(completions)} completions but {len(rows)} rows of tests.",
                          "Pass one `tests` value per completion.")
    jobs, totals = [], []
    for i, (completion, (asserts, cases)) in enumerate(zip(completions, rows)):
        totals.append(len(asserts) + len(cases))
        code = extract_code(completion_text(completion))
        if code is None:
            continue
        if asserts:
            jobs.append((i, run_asserts, code, asserts))
        jobs += [(i, run_case, code, case) for case in cases]
    passed = [0] * len(completions)
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        futures = [(i, pool.submit(fn, code, arg, timeout, memory_mb, site_packages)) for i, fn, code, arg in jobs]
        for i, future in futures:
            passed[i] += future.result()
    return [passed[i] / total if total else None for i, total in enumerate(totals)]
