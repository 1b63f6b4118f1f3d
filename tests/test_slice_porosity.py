"""scripts/slice_porosity.py: slice pore fractions of rebuilt volumes and their errors as predictions."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import slice_porosity
from test_evaluate import exits_with_error

DATASET = Path(__file__).resolve().parents[1] / "datasets" / "synthetic_rocks"


def test_the_slices_of_the_bundled_set(tmp_path, capsys):
    pytest.importorskip("porespy")
    # SPH: the cheapest generator; the script checks each rebuilt porosity against metadata.csv.
    slice_porosity.main(["--data", str(DATASET), "--reservoirs", "SPH", "--out", str(tmp_path)])
    table = pd.read_csv(tmp_path / "slice_porosity.csv")
    assert sorted(set(table["sample"])) == ["SPHS07", "SPHS08"] and len(table) == 32
    # Slices are planes of their volume: their pore fractions scatter about its porosity, and each
    # volume's porosity is the CSV's (to its 10 digits; one voxel is 5e-7).
    csv = pd.read_csv(DATASET / "metadata.csv").set_index("Image")
    for sample, group in table.groupby("sample"):
        np.testing.assert_allclose(group["volume_porosity"], csv.at[sample, "Porosity"], atol=1e-9)
        assert 0 < group["slice_porosity"].std() < 0.05
        assert abs(group["slice_porosity"].mean() - csv.at[sample, "Porosity"]) < 0.02
    assert "| SPH | 2 | 32 |" in (tmp_path / "slice_porosity.md").read_text()
    assert "| all | 2 | 32 |" in capsys.readouterr().out


def test_summary_against_float64_numpy():
    table = pd.DataFrame(
        {
            "sample": ["A1", "A1", "B1", "B1"],
            "reservoir": ["A", "A", "B", "B"],
            "volume_porosity": [0.1, 0.1, 0.3, 0.3],
            "slice_porosity": [0.12, 0.1, 0.26, 0.3],
        }
    )
    truth, pred = table["volume_porosity"].to_numpy(), table["slice_porosity"].to_numpy()
    r2 = 1 - np.sum((truth - pred) ** 2) / np.sum((truth - truth.mean()) ** 2)
    per_sample = 1 - ((0.1 - 0.11) ** 2 + (0.3 - 0.28) ** 2) / (2 * 0.1**2)
    deviation_std = np.std(pred - truth, ddof=1)
    markdown = slice_porosity.summary_markdown(table)
    mae = np.mean(np.abs(pred - truth))
    expected = f"| all | 2 | 4 | {deviation_std:.4f} | {mae:.4f} | {r2:.3f} | {per_sample:.3f} |"
    assert expected in markdown
    assert "| A | 1 | 2 | 0.0141 | 0.0100 | – | – |" in markdown


def test_a_folder_without_a_generation_record_is_refused(tmp_path, capsys):
    exits_with_error(
        capsys, "generation.json: no generation record", slice_porosity.main, ["--data", str(tmp_path)]
    )
