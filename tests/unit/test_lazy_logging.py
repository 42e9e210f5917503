"""``tvix_castore.lazy_logging``: records below the deferred levels cost no ``logging`` import;
the first record that passes runs the set-up and reaches the real logger, naming its caller.

Each case runs in a fresh interpreter: this one has ``logging`` imported (pytest's doing).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tvix_castore.lazy_logging import get_logger


def _run(*parts: str) -> subprocess.CompletedProcess[str]:
    code = "".join(textwrap.dedent(part) for part in parts)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res


SETUP = """
import sys
from tvix_castore import lazy_logging

setups = []

def setup():
    import logging
    setups.append(1)
    logging.basicConfig(format="%(levelname)s %(name)s %(funcName)s:%(lineno)d %(message)s")
    logging.getLogger().setLevel(logging.DEBUG)

# "quiet" and below log warnings and up; every other logger everything.
lazy_logging.defer_setup(lambda name: 30 if name.split(".")[0] == "quiet" else 10, setup)
quiet = lazy_logging.get_logger("quiet.child")
"""


def test_records_below_the_level_do_not_import_logging() -> None:
    res = _run(
        SETUP,
        """
        quiet.debug("dropped %s", 1)
        quiet.info("dropped %s", 2)
        quiet.log(20, "dropped %s", 3)
        print("logging" in sys.modules, setups)
        """
    )
    assert res.stdout == "False []\n"
    assert res.stderr == ""


def test_the_first_record_that_passes_runs_the_setup_once_and_names_its_caller() -> None:
    body = """
        def caller():
            quiet.warning("shown %s", "first")

        caller()
        lazy_logging.get_logger("loud").debug("shown %s", "second")
        quiet.info("shown: the real loggers' levels apply now")
        print("logging" in sys.modules, setups)
        """
    res = _run(SETUP, body)
    assert res.stdout == "True [1]\n"
    script = (SETUP + textwrap.dedent(body)).splitlines()
    warning_line = next(i for i, line in enumerate(script, 1) if "quiet.warning(" in line)
    lines = res.stderr.splitlines()
    assert lines[0] == f"WARNING quiet.child caller:{warning_line} shown first", lines
    assert lines[1].startswith("DEBUG loud <module>:") and lines[1].endswith(" shown second"), lines
    # Once logging is configured, the real loggers decide: the deferred levels are gone.
    assert lines[2].startswith("INFO quiet.child"), lines
    assert len(lines) == 3


def test_once_logging_is_imported_every_record_goes_to_the_real_logger() -> None:
    res = _run(
        SETUP,
        """
        import logging
        quiet.debug("shown although below the deferred level")
        print(setups)
        """
    )
    assert res.stdout == "[1]\n"
    assert "DEBUG quiet.child <module>" in res.stderr


def test_deferring_after_logging_was_imported_sets_up_at_once() -> None:
    res = _run(
        """
        import logging, sys
        from tvix_castore import lazy_logging
        lazy_logging.defer_setup(lambda name: 99, lambda: print("set up"))
        print("after")
        """
    )
    assert res.stdout == "set up\nafter\n"


def test_records_reach_pytest_caplog(caplog: pytest.LogCaptureFixture) -> None:
    """Here logging is imported: a module logger is the real one, levels and capture included."""
    log = get_logger("tvix_test.lazy")
    with caplog.at_level("DEBUG", logger="tvix_test.lazy"):
        log.debug("seen %d", 7)
    assert [(r.name, r.levelname, r.getMessage(), r.funcName) for r in caplog.records] == [
        ("tvix_test.lazy", "DEBUG", "seen 7", "test_records_reach_pytest_caplog")
    ]
