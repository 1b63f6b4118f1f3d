"""rockir_jax.launch: N local processes with the torchrun-style variables; one failure stops all."""

import subprocess
import sys

from rockir_jax.local_processes import launch

# One write per line: the children share the launcher's stdout.
REPORT = (
    "import os; e = os.environ; "
    "os.write(1, ' '.join([e['RANK'], e['WORLD_SIZE'], e['MASTER_ADDR'], e['MASTER_PORT'], "
    "e['JAX_NUM_CPU_DEVICES']]).encode() + b'\\n')"
)


def test_every_process_gets_its_rank_and_the_shared_address():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rockir_jax.launch",
            "-n",
            "3",
            "--cpu-devices",
            "2",
            "--",
            sys.executable,
            "-c",
            REPORT,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = sorted(line.split() for line in result.stdout.splitlines())
    assert [line[0] for line in lines] == ["0", "1", "2"]
    assert {tuple(line[1:]) for line in lines} == {("3", "127.0.0.1", lines[0][3], "2")}


def test_a_failing_process_stops_the_others(tmp_path):
    # Rank 1 fails at once; rank 0 would otherwise sleep for ten minutes and then leave a file.
    code = (
        "import os, sys, time, pathlib\n"
        "if os.environ['RANK'] == '1': sys.exit(7)\n"
        f"time.sleep(600); pathlib.Path({str(tmp_path / 'finished')!r}).touch()\n"
    )
    assert launch([sys.executable, "-c", code], processes=2) == 7
    assert not (tmp_path / "finished").exists()
