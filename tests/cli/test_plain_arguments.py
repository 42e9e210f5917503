"""The parser-free fast path for ``nar STORE_PATH`` and ``import PATH...`` matches argparse."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest

from tvix_store.cli import _plain_arguments, build_parser


@pytest.mark.parametrize(
    "argv",
    [
        ["nar", "/nix/store/00000000000000000000000000000000-x"],
        ["import", "a"],
        ["import", "a", "b c", "d/"],
    ],
)
def test_same_namespace_as_argparse(argv: list[str]) -> None:
    """Every attribute argparse sets is there with the same value (func included)."""
    fast = vars(_plain_arguments(argv))
    full = vars(build_parser().parse_args(argv))
    fast.pop("parser", None)
    full.pop("parser", None)
    assert fast == full


@pytest.mark.parametrize(
    "argv",
    [
        ["nar"],
        ["nar", "a", "b"],
        ["nar", "--help"],
        ["--log-level", "debug", "nar", "x"],
        ["import", "--nar", "f", "--name", "n"],
        ["import", "-"],
        ["path-info", "--all"],
        ["import"],
    ],
)
def test_anything_else_goes_to_argparse(argv: list[str]) -> None:
    """Options, other commands or other arities are left to the full parser."""
    assert _plain_arguments(argv) is None


def test_plain_nar_loads_no_argparse() -> None:
    """``nar STORE_PATH`` runs without importing argparse (nor shutil, which it pulls in)."""
    code = (
        "import sys\n"
        "from tvix_store.cli import main\n"
        "main(['nar', '/nix/store/00000000000000000000000000000000-x'])\n"
        "print('argparse' in sys.modules, 'shutil' in sys.modules)\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "TVIX_STORE_HOME": tmp}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env, check=False)
    assert out.stdout.split() == [b"False", b"False"], out.stderr
