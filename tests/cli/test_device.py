"""--device: a device this machine lacks is a one-line error naming the fix, before any work."""

import pytest
import torch

from _cli import cli


@pytest.mark.parametrize(
    "device,available",
    [
        ("cuda", torch.cuda.is_available()),
        (
            "mps",
            getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
        ),
    ],
)
def test_missing_device_is_one_line(tmp_path, capsys, device, available):
    if available:
        pytest.skip(f"{device} exists on this machine")  # the reference machine has neither
    run = tmp_path / "m"
    code, _, err = cli(capsys, "train", "monolith", run, "--data", "digits", "--preset", "tiny",
                       "--steps", 1, "--device", device, "-q")  # fmt: skip
    assert code == 2 and f"{device.upper()} is not available" in err and "--device cpu" in err
    assert len(err.strip().splitlines()) == 1
    assert not (run / "monolith" / "meta.json").exists()


def test_unknown_device(tmp_path, capsys):
    code, _, err = cli(capsys, "train", "monolith", tmp_path / "m", "--data", "digits",
                       "--device", "tpu", "-q")  # fmt: skip
    assert code == 2 and "unknown device 'tpu'" in err
