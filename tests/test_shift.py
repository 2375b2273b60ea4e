"""The translation-invariance probe on models whose answer is known."""

from __future__ import annotations

import argparse
import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from poolkit.analysis import cli as shift_cli
from poolkit.analysis.shift import (
    default_max_shift,
    probe_model,
    probe_run,
    resolve_run_dir,
    shift_images,
)


def _split(n: int = 40, channels: int = 3, size: int = 16, seed: int = 0) -> SimpleNamespace:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)
    return SimpleNamespace(images=images, labels=torch.randint(0, 5, (n,), generator=g))


class CircularGAP(nn.Module):
    """Conv with circular padding, then global average pooling: exactly invariant to circular shifts."""

    def __init__(self, channels: int = 3, classes: int = 5) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(channels, 8, 3, padding=1, padding_mode="circular")
        self.fc = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


class OnePixel(nn.Module):
    """Reads the pixel at (0, 0) only: any shift changes what it sees."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(3, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x[:, :, 0, 0])


MEAN, STD = [0.5, 0.4, 0.3], [0.25, 0.25, 0.2]


def test_shift_images_is_per_sample_roll():
    x = torch.arange(2 * 3 * 5 * 6, dtype=torch.float32).view(2, 3, 5, 6)
    dy, dx = torch.tensor([1, -2]), torch.tensor([3, 0])
    out = shift_images(x, dy, dx)
    for b in range(2):
        assert torch.equal(out[b], torch.roll(x[b], (int(dy[b]), int(dx[b])), dims=(1, 2)))
    assert torch.equal(shift_images(x, 2, -1), torch.roll(x, (2, -1), dims=(2, 3)))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        shift_images(x[0], 1, 1)


def test_shift_invariant_model_is_fully_consistent():
    split = _split()
    result = probe_model(CircularGAP(), split, MEAN, STD, max_shift=4, seed=3, batch_size=16)
    assert result["consistency"] == 100.0
    assert result["pairs"] == result["images"] == 40
    accuracies = list(result["accuracy_by_shift"].values())
    assert list(result["accuracy_by_shift"]) == ["0", "1", "2", "3", "4"]
    assert all(a == accuracies[0] for a in accuracies)


def test_constant_classifier_is_fully_consistent():
    class Constant(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tensor([0.0, 1.0, 0.0]).expand(x.shape[0], 3)

    split = _split()
    split.labels = torch.ones(40, dtype=torch.long)
    result = probe_model(Constant(), split, MEAN, STD)
    assert result["consistency"] == 100.0
    assert set(result["accuracy_by_shift"].values()) == {100.0}


def test_shift_sensitive_model_is_less_consistent():
    result = probe_model(OnePixel(), _split(n=200), MEAN, STD, max_shift=4)
    assert result["consistency"] < 90.0
    # with no shift at all both copies are the same image
    assert probe_model(OnePixel(), _split(n=50), MEAN, STD, max_shift=0)["consistency"] == 100.0


def test_accuracy_under_shift_matches_direct_computation():
    split = _split(n=30)
    model = OnePixel()
    result = probe_model(model, split, MEAN, STD, batch_size=7)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    x = (split.images.float() / 255 - mean) / std
    for d in range(5):
        with torch.no_grad():
            pred = model(torch.roll(x, (d, d), dims=(2, 3))).argmax(1)
        assert result["accuracy_by_shift"][str(d)] == pytest.approx(
            100.0 * (pred == split.labels).float().mean()
        )


def test_deterministic_given_seed_and_independent_of_batch_size():
    split = _split(n=64)
    model = OnePixel()
    a = probe_model(model, split, MEAN, STD, seed=1, batch_size=64)
    b = probe_model(model, split, MEAN, STD, seed=1, batch_size=5)
    c = probe_model(model, split, MEAN, STD, seed=2, batch_size=64)
    assert a == b
    assert a["seed"] == 1 and c["seed"] == 2
    assert a["accuracy_by_shift"] == c["accuracy_by_shift"], "diagonal shifts do not depend on the seed"


def test_defaults_mode_restore_and_max_images():
    model = OnePixel().train()
    result = probe_model(model, _split(n=20, size=32), MEAN, STD, max_images=8)
    assert model.training, "the model's training mode is restored"
    assert result["max_shift"] == default_max_shift(32) == 4
    assert result["images"] == 8
    assert default_max_shift(64) == 8 and default_max_shift((64, 40)) == 5 and default_max_shift(4) == 1
    json.dumps(result)


def test_bad_input_is_refused():
    split = _split()
    with pytest.raises(ValueError, match="uint8"):
        probe_model(OnePixel(), SimpleNamespace(images=split.images.float(), labels=split.labels), MEAN, STD)
    with pytest.raises(ValueError, match="labels"):
        probe_model(OnePixel(), SimpleNamespace(images=split.images, labels=split.labels[:3]), MEAN, STD)
    with pytest.raises(ValueError, match="max_shift"):
        probe_model(OnePixel(), split, MEAN, STD, max_shift=-1)
    with pytest.raises(ValueError, match="batch_size"):
        probe_model(OnePixel(), split, MEAN, STD, batch_size=0)


def test_resolve_run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(ValueError, match=r"no checkpoint\.pt"):
        resolve_run_dir(run)
    (run / "config.yaml").write_text("dataset: synthetic\n")
    (run / "checkpoint.pt").write_bytes(b"")
    assert resolve_run_dir(run) == run
    assert resolve_run_dir(run / "checkpoint.pt") == run
    with pytest.raises(ValueError, match="does not exist"):
        resolve_run_dir(tmp_path / "missing")
    loose = tmp_path / "loose.pt"
    loose.write_bytes(b"")
    with pytest.raises(ValueError, match=r"no config\.yaml"):
        resolve_run_dir(loose)


def test_cli_reports_a_bad_target(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    shift_cli.add_arguments(parser)
    assert shift_cli.main(parser.parse_args([str(tmp_path / "nope")])) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_probe_run_writes_shift_json(tmp_path, capsys):
    from poolkit.train import train_run

    run = tmp_path / "run"
    config = {
        "dataset": "synthetic",
        "model": "vgg11",
        "pool": "max",
        "epochs": 1,
        "width": 0.0625,
        "threads": 2,
    }
    train_run(config, run, progress=False)
    result = probe_run(run / "checkpoint.pt", device="cpu", max_images=32)
    written = json.loads((run / "shift.json").read_text())
    assert written == result
    assert set(written) >= {"consistency", "pairs", "max_shift", "accuracy_by_shift", "images"}
    assert written["images"] == written["pairs"] == 32 and written["max_shift"] == 4
    assert 0.0 <= written["consistency"] <= 100.0
    (run / "shift.json").unlink()
    parser = argparse.ArgumentParser()
    shift_cli.add_arguments(parser)
    assert shift_cli.main(parser.parse_args([str(run), "--max-images", "32", "--device", "cpu"])) == 0
    assert "shift consistency" in capsys.readouterr().out
    assert json.loads((run / "shift.json").read_text()) == result, "the probe is deterministic"
