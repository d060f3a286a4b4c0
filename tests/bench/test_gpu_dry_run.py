"""bench/gpu.sh --dry-run: the GPU check's plumbing on CPU (tiny model, a few steps), so the script a lent
GPU machine runs is known to work end to end: our loop under DeepSpeed ZeRO-2, TRL's ORPOTrainer on the
same batches with the same token ids, and a vLLM section that runs where vllm is installed and says
why it is skipped where it is not (this environment)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.distributed
def test_gpu_bench_dry_run_prints_every_section(tmp_path):
    out = tmp_path / "results.json"
    # A budget, not a speed: ~15 s of CPU; minutes of wall time on a loaded 2-core machine.
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu.sh"), "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, timeout=1500, check=False,
                          env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    for name in ("ours", "trl"):
        assert results[name].get("tokens_per_s", 0) > 0, results[name]
    assert results["trl"]["id_mismatches"] == 0  # TRL trained on exactly our token ids
    assert results["ours"]["final_loss"] == results["ours"]["final_loss"]  # finite
    vllm = results["vllm"]
    assert vllm.get("output_tokens_per_s", 0) > 0 or "No module named 'vllm'" in vllm.get("skipped", ""), vllm
    for line in ("ours (loop + DeepSpeed ZeRO-2)", "TRL ORPOTrainer", "ours / TRL real tokens/s", "vLLM generation"):
        assert line in proc.stdout
