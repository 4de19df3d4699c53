"""Every `bench/` script still starts: its imports resolve (the benches reuse test helpers, whose files
move) and its argument parser answers --help. One Python process runs them all, so the check costs one
interpreter start, not fourteen. bench_lora_memory.py also runs once at a tiny size, its numbers checked
against each other."""

import json
import os
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


def test_lora_memory_bench_compares_full_and_lora_on_the_same_model(tmp_path):
    """bench_lora_memory.py at a tiny size: both runs build the same weights, LoRA trains exactly its adapters,
    gradients and AdamW state follow from the trainable tensors, and full fine-tuning needs more of each."""
    hidden, layers, intermediate, rank = 64, 2, 160, 2
    out = tmp_path / "lora_memory.json"
    proc = subprocess.run([sys.executable, "bench/bench_lora_memory.py", "--hidden", str(hidden), "--layers",
                           str(layers), "--intermediate", str(intermediate), "--rank", str(rank), "--batch", "2",
                           "--json", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    numbers = json.loads(out.read_text())
    full, lora, ratios = numbers["full"], numbers["lora"], numbers["ratios"]

    assert full["weights_sha256"] == lora["weights_sha256"]
    assert full["trainable_params"] == full["params_total"] and full["trainable_dtypes"] == ["bfloat16"]
    # r * (in + out) per adapted linear: q, k, v, o (hidden -> hidden), gate, up, down (hidden <-> intermediate)
    per_layer = 4 * (hidden + hidden) + 3 * (hidden + intermediate)
    assert lora["trainable_params"] == lora["adapter_params"] == rank * layers * per_layer
    assert lora["params_total"] == full["params_total"] + lora["adapter_params"]
    for row in (full, lora):
        assert len(row["trainable_dtypes"]) == 1
        width = {"bfloat16": 2, "float32": 4}[row["trainable_dtypes"][0]]
        assert row["trainable_bytes"] == width * row["trainable_params"]
        assert row["params_without_grad"] == 0 and row["grad_bytes"] == row["trainable_bytes"]
        # AdamW: exp_avg and exp_avg_sq shaped like each weight, plus a small step counter per tensor
        assert 2 * row["trainable_bytes"] <= row["optimizer_state_bytes"] <= (2 * row["trainable_bytes"]
                                                                           + 8 * row["trainable_tensors"])
        assert row["grad_norm"] > 0  # a real backward pass reached the trained weights
        assert row["step_peak_rss_mb"] is None or row["step_peak_rss_mb"] >= 0
    for key in ("trainable_params", "grad_bytes", "optimizer_state_bytes"):
        assert ratios[key] == full[key] / lora[key] and ratios[key] > 1, key
        assert f"{ratios[key]:.1f}x" in next(line for line in proc.stdout.splitlines() if line.startswith(key))
