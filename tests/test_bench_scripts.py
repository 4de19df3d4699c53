"""Every `bench/` script still starts: its imports resolve (the benches reuse test helpers, whose files
move) and its argument parser answers --help. One Python process runs them all, so the check costs one
interpreter start, not fourteen."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import contextlib, io, json, os, runpy, sys
results = {}
for path in sys.argv[1:]:
    sys.argv = [path, "--help"]
    sys.path.insert(0, os.path.dirname(path))  # as `python bench/X.py` puts the script's folder first
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(path, run_name="__main__")
        results[path] = "returned without printing help"
    except SystemExit as exc:
        results[path] = "ok" if exc.code in (0, None) and "usage:" in out.getvalue() else f"exit {exc.code}"
    except BaseException as exc:  # an import that no longer resolves, a syntax error
        results[path] = f"{type(exc).__name__}: {exc}"
print(json.dumps(results))
"""


def test_every_bench_script_imports_and_answers_help():
    scripts = sorted(str(p) for p in (ROOT / "bench").glob("*.py"))
    assert len(scripts) >= 10, scripts
    proc = subprocess.run([sys.executable, "-c", PROBE, *scripts], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {Path(p).name: r for p, r in results.items() if r != "ok"} == {}
    assert len(results) == len(scripts)
