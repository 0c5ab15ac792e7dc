"""The API refuses to start on a waitress it was not tested with: its server reaches into waitress's internals
(webapp/http/__init__.py lists them), which change between releases."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from webapp.http import TESTED_WAITRESS, require_tested_waitress


def test_the_tested_waitress_starts() -> None:
    for version in TESTED_WAITRESS:
        require_tested_waitress(version)


def test_another_waitress_is_refused_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        require_tested_waitress("3.1.0")
    assert exited.value.code != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "waitress 3.1.0" in err


_START_ON_ANOTHER_WAITRESS = textwrap.dedent("""
    import runpy
    from importlib import metadata
    installed = metadata.version
    metadata.version = lambda name: "9.9.9" if name == "waitress" else installed(name)
    runpy.run_module("webapp", run_name="__main__")
""")


def test_python_m_webapp_exits_with_one_line_on_another_waitress() -> None:
    # Given `python -m webapp` with another waitress installed (its reported version replaced)
    done = subprocess.run([sys.executable, "-c", _START_ON_ANOTHER_WAITRESS], capture_output=True, text=True, timeout=60)
    # Then it exits non-zero at once, with one line saying why, before touching any service
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and "waitress 9.9.9" in done.stderr
