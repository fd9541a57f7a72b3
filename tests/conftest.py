"""Fixtures shared by the log tests.

``tests/`` is put on ``sys.path`` so that every test module (collected with
``--import-mode=importlib``) and every ``spawn`` child can ``import helpers``:
a spawned child receives the parent's ``sys.path`` and unpickles its target as
``helpers.<function>``.
"""

from __future__ import annotations

import os
import sys

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from mmwal import _io  # noqa: E402
from mmwal._faults import ErrorLayer  # noqa: E402


@pytest.fixture(autouse=True)
def _real_io_layer():
    """Whatever a test installs with ``_io.set_layer``, the next test gets the real OS."""
    before = _io.layer
    yield
    if _io.layer is not before:
        _io.set_layer(before)


@pytest.fixture
def store_path(tmp_path):
    """A path where a store may be created (it does not exist yet)."""
    return str(tmp_path / "store")


@pytest.fixture
def layer():
    """The real OS behind an ErrorLayer that only counts until armed (helpers.arm)."""
    lay = ErrorLayer()
    old = _io.set_layer(lay)
    yield lay
    _io.set_layer(old)
