"""DDP through torchrun on CPU (gloo): two processes, one global loss, one checkpoint. ~16 s → slow."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent('''
    import sys
    import torch.distributed as dist
    from lightgen.config import load_config
    from lightgen.train.pretrain import train
    from lightgen.train.squares import SquaresDataset
    over = ["data.resolution=32", "model.patch_size=8", "model.width=32", "model.heads=2", "model.encoder_depth=1",
            "model.decoder_depth=1", "model.cross_depth=2", "model.aligner_depth=1", "model.head_width=192",
            "model.head_depth=1", "model.toy_text_width=16", "model.toy_text_depth=1", "model.buffer_size=2",
            "train.batch_size=4", "train.log_every=1", "train.num_threads=1", "train.iterations=3",
            "train.checkpoint_every=2"]
    r = train(load_config("smoke", over), SquaresDataset(16, 32), sys.argv[1], count_flops=False, progress=False)
    print("RESULT", dist.get_rank(), r.step, [round(v, 6) for _, v in r.loss_history],
          r.metrics["compute/samples_seen"], flush=True)
''')


@pytest.mark.slow
def test_ddp_two_processes_agree(tmp_path):
    if shutil.which("torchrun") is None:
        pytest.skip("torchrun not on PATH")
    script = tmp_path / "ddp.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    out = subprocess.run(
        ["torchrun", "--nproc_per_node", "2", "--master_port", "29541", str(script), str(tmp_path / "ck")],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = sorted(line.split(" ", 2) for line in out.stdout.splitlines() if line.startswith("RESULT"))
    assert [r[1] for r in rows] == ["0", "1"]
    assert rows[0][2] == rows[1][2]  # same step, same (all-reduced) losses, same samples seen
    assert "24.0" in rows[0][2]  # 3 steps × 4 per process × 2 processes
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["step-0000002", "step-0000003"]
