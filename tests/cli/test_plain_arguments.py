"""The parser-free fast path for ``nar STORE_PATH`` and ``import PATH...`` matches argparse."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from tvix_cli import tvix

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


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="tvix-cli-") as home:
        env = {**os.environ, "TVIX_STORE_HOME": home}
        return subprocess.run(
            [sys.executable, "-m", "tvix_store", *args], capture_output=True, text=True, env=env, timeout=60
        )


def test_tvix_command_line_conveniences() -> None:
    """What clap gives tvix's command line: -V, `help [COMMAND]`, and --otlp[=true|false],
    which is accepted (we export no traces) anywhere before ``--``."""
    assert _run("-V").stdout == _run("--version").stdout != ""
    assert _run("help").stdout == _run("--help").stdout
    assert _run("help", "nar").stdout == _run("nar", "--help").stdout
    assert "--otlp" in _run("--help").stdout
    for args in (["--otlp", "path-info", "--all"], ["--otlp=false", "path-info", "--all", "--otlp=true"]):
        res = _run(*args)
        assert (res.returncode, res.stdout, res.stderr) == (0, "", "")
    bad = _run("--otlp=maybe", "path-info", "--all")
    assert bad.returncode == 2
    assert "invalid value 'maybe' for '--otlp'" in bad.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["--blob-service-addr", "", "path-info", "--all"],
        ["--directory-service-addr=", "import", "x"],
        ["nar", "--path-info-service-addr", "", "/nix/store/00000000000000000000000000000000-x"],
        ["daemon", "-l", ""],
        ["serve-cache", "--listen-address="],
    ],
)
def test_an_empty_address_is_a_usage_error(argv: list[str]) -> None:
    """``--blob-service-addr "$UNSET"`` must not quietly mean the embedded store (or the
    default listen address): as clap passes "" on to the URL parser, which refuses it."""
    res = _run(*argv)
    assert res.returncode == 2, res
    assert "may not be empty" in res.stderr and res.stdout == ""


def test_options_anywhere_among_the_arguments(tmp_path: Path) -> None:
    """As clap and ``nix path-info`` take them: options between the positional arguments, and
    ``help`` after global options; an unknown option is the subcommand's error, under its usage."""
    store = tmp_path / "store"
    (tmp_path / "a").write_bytes(b"a")
    (tmp_path / "b").write_bytes(b"b")
    both = tvix(store, "import", tmp_path / "a", "--log-level", "warn", tmp_path / "b").stdout.split()
    assert both == tvix(store, "import", tmp_path / "a", tmp_path / "b").stdout.split()
    a, b = (p.decode() for p in both)
    intermixed = tvix(store, "path-info", a, "--json", b).stdout
    assert intermixed == tvix(store, "path-info", "--json", a, b).stdout
    assert json.loads(intermixed)[0]["path"] in (a, b)
    assert _run("--log-level", "debug", "help", "nar").stdout == _run("nar", "--help").stdout
    assert _run("--log-level", "debug", "help").stdout == _run("--help").stdout
    bad = _run("import", "--bogus")
    assert bad.returncode == 2
    assert bad.stderr.splitlines()[-1] == "tvix-store import: error: unrecognized arguments: --bogus"


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--log-level", "bogus", "path-info", "--all"], {}, "--log-level: invalid log level 'bogus'"),
        (["mount", "/nonexistent-mnt"], {"THREADS": "abc"}, "THREADS: not a number: 'abc'"),
        (["mount", "--threads", "abc", "/nonexistent-mnt"], {}, "not a number: 'abc'"),
    ],
)
def test_bad_option_values_are_usage_errors(argv: list[str], env: dict[str, str], message: str) -> None:
    """A bad value for a flag, or for the env var standing in for one, exits 2 as clap's usage
    errors do (RUST_LOG, not a flag, stays an ordinary error: exit 1)."""
    with tempfile.TemporaryDirectory(prefix="tvix-cli-") as home:
        res = subprocess.run(
            [sys.executable, "-m", "tvix_store", *argv],
            capture_output=True,
            text=True,
            env={**os.environ, "TVIX_STORE_HOME": home, **env},
            timeout=60,
        )
    assert res.returncode == 2, res
    assert message in res.stderr


def test_arguments_after_a_double_dash_are_positional(tmp_path: Path) -> None:
    """``import -- -dash`` imports the file named -dash, as before options could come anywhere."""
    (tmp_path / "-dash").write_bytes(b"d")
    (tmp_path / "a").write_bytes(b"a")
    store = tmp_path / "store"
    out = tvix(store, "import", "--", "-dash", cwd=tmp_path).stdout.decode().split()
    assert len(out) == 1 and out[0].endswith("--dash")
    both = tvix(store, "import", "--", "a", "-dash", cwd=tmp_path).stdout.decode().split()
    assert both[1] == out[0] and both[0].endswith("-a")
