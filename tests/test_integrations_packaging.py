"""The framework adapters stay optional: extras, import isolation, the error without them."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _extras() -> dict[str, list[str]]:
    # A small reader of [project.optional-dependencies] (tomllib is 3.11+ and
    # the project supports 3.10): one `name = [...]` per extra, lists possibly
    # spanning lines, comments stripped.
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as f:
        text = f.read()
    section = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    section = "\n".join(line.split("#", 1)[0] for line in section.splitlines())
    return {name: re.findall(r'"([^"]+)"', body)
            for name, body in re.findall(r"^([\w-]+)\s*=\s*\[(.*?)\]\s*$", section, re.M | re.S)}


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)


def test_import_mmwal_imports_no_framework():
    r = _run("import sys, mmwal, mmwal.cli\n"
             "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
             "('langchain_core', 'langchain', 'langchain_tests', 'llama_index'))\n"
             "print(bad)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


@pytest.mark.parametrize(("module", "blocked", "extra"), [
    ("mmwal.langchain", "langchain_core", "langchain"),
    ("mmwal.llama_index", "llama_index", "llama-index"),
])
def test_missing_extra_names_the_pip_command(module, blocked, extra):
    # sys.modules[name] = None makes every import of that package fail, as if
    # it were not installed.
    r = _run(f"import sys; sys.modules[{blocked!r}] = None\n"
             "try:\n"
             f"    import {module}\n"
             "except ImportError as e:\n"
             "    print(type(e).__name__, '|', e)\n"
             "else:\n"
             "    print('imported')\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ImportError |"), r.stdout
    assert f"pip install 'mmwal[{extra}]'" in r.stdout
    assert blocked.split(".")[0].replace("_", "-") in r.stdout.replace("_", "-")


def test_extras_all_lists_every_feature_extra_and_test_installs_the_adapters():
    extras = _extras()
    assert extras["langchain"] == ["langchain-core>=1.0"]
    assert extras["llama-index"] == ["llama-index-core>=0.14"]
    (all_,) = extras["all"]
    listed = set(re.fullmatch(r"mmwal\[(.*)\]", all_).group(1).split(","))
    assert listed == set(extras) - {"all", "test", "dev"}
    names = {re.split(r"[<>=\[ ;]", req, maxsplit=1)[0] for req in extras["test"]}
    assert {"langchain-core", "langchain-tests", "llama-index-core"} <= names
    assert "mmwal[test,all]" in extras["dev"]
