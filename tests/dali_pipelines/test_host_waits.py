"""The docs say where the host waits: `pipe.run()` without a stream returns host-synchronous
outputs (DALI's docstring), so the loaders wait there once per pipeline per batch; no module
claims a path without a host sync, and the call that waits says so."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "dali_pipelines"


def test_no_module_claims_no_host_sync():
    claims = [f"{p.name}:{n}" for p in sorted(ROOT.glob("*.py"))
              for n, line in enumerate(p.read_text().splitlines(), 1)
              if "no host sync" in line.lower() or "no sync" in line.lower()]
    assert not claims, claims


def test_every_pipeline_run_says_the_host_waits_there():
    runs = [(p.name, line) for p in sorted(ROOT.glob("*.py")) for line in p.read_text().splitlines()
            if "pipe.run()" in line and not line.lstrip().startswith(("#", '"', "`"))
            and "=" in line]
    assert runs  # the loaders' run is found
    for name, line in runs:
        assert "host waits" in line, f"{name}: {line.strip()}"
    assert "Where the host waits" in (ROOT / "tensors.py").read_text()
