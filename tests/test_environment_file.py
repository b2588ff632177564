"""environment.yml: conda-forge only (the pytorch channel stopped at 2.5), no unused packages,
and a header that says what it holds."""

from pathlib import Path

import yaml

ENVIRONMENT = Path(__file__).resolve().parent.parent / "environment.yml"


def test_conda_forge_only_cpu_pytorch_no_h5py():
    text = ENVIRONMENT.read_text()
    spec = yaml.safe_load(text)
    assert spec["channels"] == ["conda-forge"]
    names = [d.split("[")[0].split(">")[0].split("=")[0] for d in spec["dependencies"]
             if isinstance(d, str)]
    assert "pytorch" in names and "cpuonly" not in names and "h5py" not in names
    torch_line = next(d for d in spec["dependencies"] if isinstance(d, str)
                      and d.startswith("pytorch"))
    assert "cpu" in torch_line
    assert "exact pins" not in text.lower()
