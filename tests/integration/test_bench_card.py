"""`eeszt-gw bench card-login` runs through the real PC/SC stack and prints its figures."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.pcsc_support import ensure_pcscd

pytestmark = [pytest.mark.integration, pytest.mark.pcsc]


def test_card_login_benchmark_prints_login_and_apdu_figures(tmp_path):
    ensure_pcscd()
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "eeszt_gw.cli", "bench", "card-login", "--n", "5",
                           "--apdus", "50", "--json", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "challenge → rID answer" in proc.stdout and "APDU round trip" in proc.stdout
    figures = json.loads(out.read_text())
    assert figures["logins"] == 5 and figures["apdus_per_login"] >= 5
    assert figures["login_ms"]["median"] > figures["apdu_rtt_us"]["median"] / 1000
