"""Tests of poolkit.data's batched augmentation (augment.py) and TensorLoader (loader.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from poolkit.data import (
    ImageSplit,
    TensorLoader,
    crop_at,
    flip_where,
    normalize,
    random_crop,
    random_flip,
)

# ----------------------------------------------------------------------------------------------------
# Crop, flip, normalise


def hand_made_batch(b: int = 5, c: int = 2, h: int = 6, w: int = 7) -> torch.Tensor:
    """Every pixel distinct and non-zero, so a wrong crop or a wrong padding value shows."""
    return (torch.arange(b * c * h * w) % 250 + 1).to(torch.uint8).view(b, c, h, w)


@pytest.mark.parametrize("padding", [1, 2, 4])
def test_crop_at_equals_the_padded_slice(padding):
    batch = hand_made_batch()
    offsets = torch.tensor([[0, 0], [2 * padding, 2 * padding], [padding, padding], [0, 2 * padding], [1, 0]])
    out = crop_at(batch, offsets, padding)
    padded = F.pad(batch, (padding,) * 4)
    for i, (dy, dx) in enumerate(offsets.tolist()):
        assert torch.equal(out[i], padded[i, :, dy : dy + 6, dx : dx + 7])
    assert torch.equal(out[2], batch[2])  # offset (padding, padding) is the identity
    assert out.dtype == torch.uint8 and out.shape == batch.shape


def test_crop_at_shifts_content_and_pads_with_zeros():
    batch = hand_made_batch(b=1, c=1)
    out = crop_at(batch, torch.tensor([[0, 0]]), 2)  # content moves 2 pixels down and right
    assert torch.equal(out[0, 0, 2:, 2:], batch[0, 0, :-2, :-2])
    assert int(out[0, 0, :2].abs().sum()) == 0 and int(out[0, 0, :, :2].abs().sum()) == 0


def test_crop_at_works_on_float_non_contiguous_and_channels_last_batches():
    batch = hand_made_batch().float().transpose(2, 3)  # (5, 2, 7, 6), non-contiguous
    offsets = torch.tensor([[1, 3], [0, 0], [4, 4], [2, 1], [3, 0]])
    padded = F.pad(batch.contiguous(), (2, 2, 2, 2))
    expected = torch.stack(
        [padded[i, :, dy : dy + 7, dx : dx + 6] for i, (dy, dx) in enumerate(offsets.tolist())]
    )
    assert torch.equal(crop_at(batch, offsets, 2), expected)
    assert torch.equal(crop_at(batch.contiguous(memory_format=torch.channels_last), offsets, 2), expected)


def test_crop_at_rejects_bad_offsets():
    batch = hand_made_batch()
    with pytest.raises(ValueError, match=r"offsets must lie in \[0, 2\]"):
        crop_at(batch, torch.full((5, 2), 3), 1)
    with pytest.raises(ValueError, match=r"offsets must be an int tensor of shape \(5, 2\)"):
        crop_at(batch, torch.zeros(4, 2, dtype=torch.int64), 1)
    with pytest.raises(ValueError, match="padding must be an int >= 0"):
        crop_at(batch, torch.zeros(5, 2, dtype=torch.int64), -1)
    with pytest.raises(ValueError, match=r"expects a batch of shape \(B, C, H, W\)"):
        crop_at(batch[0], torch.zeros(1, 2, dtype=torch.int64), 1)


def test_random_crop_takes_a_padded_slice_per_image_and_is_reproducible():
    batch = hand_made_batch(b=64, c=1, h=5, w=5)
    out = random_crop(batch, 2, torch.Generator().manual_seed(0))
    assert torch.equal(out, random_crop(batch, 2, torch.Generator().manual_seed(0)))
    padded = F.pad(batch, (2, 2, 2, 2))
    seen = set()
    for i in range(64):
        matches = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if torch.equal(out[i], padded[i, :, dy : dy + 5, dx : dx + 5])
        ]
        assert matches, f"image {i} is not a crop of its padded input"
        seen.update(matches)
    assert len(seen) > 15  # offsets are spread over the 25 positions
    assert torch.equal(random_crop(batch, 0, torch.Generator()), batch)


def test_random_crop_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    random_crop(hand_made_batch(), 4, torch.Generator().manual_seed(1))
    random_flip(hand_made_batch(), torch.Generator().manual_seed(1))
    assert torch.equal(torch.get_rng_state(), state)


def test_flip_where_and_random_flip():
    batch = hand_made_batch(b=200, c=1, h=2, w=3)
    mask = torch.tensor([True, False] * 100)
    out = flip_where(batch, mask)
    assert torch.equal(out[0], torch.flip(batch[0], dims=[-1])) and torch.equal(out[1], batch[1])

    out = random_flip(batch, torch.Generator().manual_seed(0))
    flipped = torch.tensor(
        [torch.equal(o, torch.flip(x, dims=[-1])) for o, x in zip(out, batch, strict=True)]
    )
    same = torch.tensor([torch.equal(o, x) for o, x in zip(out, batch, strict=True)])
    assert bool((flipped ^ same).all())  # each image is either mirrored or untouched
    assert 70 < int(flipped.sum()) < 130
    assert torch.equal(random_flip(batch, torch.Generator(), p=0.0), batch)
    with pytest.raises(ValueError, match=r"mask must be a bool tensor of shape \(200,\)"):
        flip_where(batch, mask[:10])


def test_normalize_values_and_dtype():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1)
    out = normalize(x, mean=(0.0, 0.2, 0.5), std=(1.0, 0.1, 0.5))
    assert torch.allclose(out.flatten(), torch.tensor([0.0, 0.0, 1.0]), atol=1e-6)
    assert normalize(x, (0.5,) * 3, (0.5,) * 3, torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="mean and std need 3 values"):
        normalize(x, (0.5,), (0.5,))
    with pytest.raises(ValueError, match="every std must be > 0"):
        normalize(x, (0.5,) * 3, (0.5, 0.0, 0.5))


# ----------------------------------------------------------------------------------------------------
# TensorLoader


MEAN, STD = (0.5, 0.4), (0.25, 0.2)


def distinct_split(n: int = 50, size: int = 6) -> ImageSplit:
    """Random images (distinct with overwhelming probability), so each batch row can be traced back."""
    images = torch.randint(
        1, 255, (n, 2, size, size), generator=torch.Generator().manual_seed(9), dtype=torch.uint8
    )
    return ImageSplit(images, torch.arange(n) % 7)


def make_loader(split: ImageSplit, **kwargs) -> TensorLoader:
    options = dict(train=True, mean=MEAN, std=STD, seed=0, crop_padding=1)
    options.update(kwargs)
    return TensorLoader(split, options.pop("batch_size", 8), **options)


def collect(loader: TensorLoader, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    batches = list(loader.epoch(epoch))
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def test_len_counts_batches():
    split = distinct_split(50)
    assert len(make_loader(split, batch_size=8)) == 7
    assert len(make_loader(split, batch_size=8, drop_last=True)) == 6
    assert len(make_loader(split, batch_size=50)) == 1
    sizes = [len(y) for _, y in make_loader(split, batch_size=8).epoch(0)]
    assert sizes == [8] * 6 + [2]
    assert [len(y) for _, y in make_loader(split, batch_size=8, drop_last=True).epoch(0)] == [8] * 6


def test_evaluation_is_in_order_unaugmented_and_normalised():
    split = distinct_split(50)
    loader = make_loader(split, train=False, batch_size=16)
    images, labels = collect(loader, 0)
    assert torch.equal(labels, split.labels)
    assert torch.allclose(images, normalize(split.images, MEAN, STD))
    again, _ = collect(loader, 5)  # evaluation ignores the epoch
    assert torch.equal(images, again)
    assert torch.equal(torch.cat([x for x, _ in loader]), images)  # plain iteration is allowed


def test_training_epoch_depends_only_on_seed_and_epoch():
    split = distinct_split(50)
    a3, la3 = collect(make_loader(split), 3)
    # A fresh loader (as after a resume) gives the same epoch 3, whatever ran before or the global RNG.
    other = make_loader(split)
    collect(other, 0)
    collect(other, 1)
    torch.manual_seed(1234)
    b3, lb3 = collect(other, 3)
    assert torch.equal(a3, b3) and torch.equal(la3, lb3)
    a4, la4 = collect(make_loader(split), 4)
    assert not torch.equal(la3, la4) and not torch.equal(a3, a4)
    _, lc3 = collect(make_loader(split, seed=1), 3)
    assert not torch.equal(la3, lc3)


def test_training_epoch_is_a_permutation_and_each_image_a_crop_or_flip_of_its_source():
    split = distinct_split(30, size=5)
    loader = make_loader(split, batch_size=7, crop_padding=1, flip=True)
    images, labels = collect(loader, 2)
    assert sorted(labels.tolist()) == sorted(split.labels.tolist())
    pixels = (images * torch.tensor(STD).view(1, 2, 1, 1) + torch.tensor(MEAN).view(1, 2, 1, 1)) * 255
    pixels = pixels.round().to(torch.uint8)
    padded = F.pad(split.images, (1, 1, 1, 1))
    candidates = [(i, flip) for i in range(30) for flip in (False, True)]
    used, flips = [], 0
    for out in pixels:
        found = None
        for i, flip in candidates:
            source = padded[i].flip(-1) if flip else padded[i]
            if any(
                torch.equal(out, source[:, dy : dy + 5, dx : dx + 5]) for dy in range(3) for dx in range(3)
            ):
                found = (i, flip)
                break
        assert found is not None
        used.append(found[0])
        flips += found[1]
    assert sorted(used) == list(range(30))  # every image exactly once
    assert 0 < flips < 30


def test_no_augmentation_or_no_flip_when_disabled():
    split = distinct_split(40)
    plain, labels = collect(make_loader(split, augment=False), 1)
    order = [
        int(torch.nonzero(torch.all(normalize(split.images, MEAN, STD) == x, dim=(1, 2, 3)))[0])
        for x in plain
    ]
    assert sorted(order) == list(range(40)) and order != list(range(40))  # shuffled, untouched
    assert torch.equal(labels, split.labels[order])
    no_flip, _ = collect(make_loader(split, crop_padding=0, flip=False), 1)
    assert torch.equal(no_flip, plain)  # same order as augment=False; nothing applied


def test_augmentation_does_not_depend_on_the_batch_size():
    split = distinct_split(50)
    small, _ = collect(make_loader(split, batch_size=7), 2)
    large, _ = collect(make_loader(split, batch_size=32), 2)
    assert torch.equal(small, large)


def test_ranks_share_an_epoch():
    split = distinct_split(50)
    full, full_labels = collect(make_loader(split, batch_size=5), 1)
    loaders = [make_loader(split, batch_size=5, rank=r, world_size=3) for r in range(3)]
    parts = [collect(loader, 1) for loader in loaders]
    # No padding: every image once per epoch; the shares of the last global batch (5 images) are 2, 2, 1.
    assert [len(y) for _, y in parts] == [17, 17, 16]
    assert [len(loader) for loader in loaders] == [4, 4, 4]  # the same number of steps on every rank
    assert [loaders[0].global_batch_count(step) for step in range(4)] == [15, 15, 15, 5]
    # Position p of the single-process epoch is image p // 3 of rank p % 3.
    assert torch.equal(torch.stack([parts[p % 3][0][p // 3] for p in range(50)]), full)
    assert torch.equal(torch.stack([parts[p % 3][1][p // 3] for p in range(50)]), full_labels)
    # Step b of every rank together is the single-process run's global batch b.
    batches = [list(loader.epoch(1)) for loader in loaders]
    for b in range(4):
        together = sorted(torch.cat([batches[r][b][1] for r in range(3)]).tolist())
        assert together == sorted(full_labels[15 * b : 15 * (b + 1)].tolist())
    evaluation = [collect(make_loader(split, train=False, rank=r, world_size=3), 0)[1] for r in range(3)]
    assert [len(y) for y in evaluation] == [17, 17, 16]
    assert sorted(torch.cat(evaluation).tolist()) == sorted(split.labels.tolist())


def test_a_last_global_batch_smaller_than_the_world_is_dropped_on_every_rank():
    split = distinct_split(46)  # 3 global batches of 15, then 1 image: one rank would have none
    loaders = [make_loader(split, batch_size=5, rank=r, world_size=3) for r in range(3)]
    assert [len(loader) for loader in loaders] == [3, 3, 3]
    assert [loader.num_samples for loader in loaders] == [15, 15, 15]
    plain = [make_loader(split, batch_size=5, rank=r, world_size=3, augment=False) for r in range(3)]
    images = torch.cat([collect(loader, 0)[0] for loader in plain]).flatten(1)
    assert len(images) == 45 and len(torch.unique(images, dim=0)) == 45  # none repeated
    dropped = make_loader(split, batch_size=5, rank=0, world_size=3, drop_last=True)
    assert len(dropped) == 3 and dropped.global_batch_count(3) == 0


def test_output_dtype_memory_format_and_device():
    split = distinct_split(20)
    x, y = next(make_loader(split, channels_last=True, dtype=torch.bfloat16).epoch(0))
    assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)
    assert y.dtype == torch.int64 and x.device.type == "cpu"


def test_loader_rejects_bad_arguments():
    split = distinct_split(10)
    with pytest.raises(TypeError, match=r"loader.epoch\(e\)"):
        iter(make_loader(split))
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        make_loader(split, batch_size=0)
    with pytest.raises(ValueError, match="mean and std need 2 values"):
        make_loader(split, mean=(0.5,), std=(0.2,))
    with pytest.raises(ValueError, match="dtype must be a floating"):
        make_loader(split, dtype=torch.int32)
    with pytest.raises(ValueError, match="rank must be < world_size"):
        make_loader(split, rank=2, world_size=2)
    with pytest.raises(ValueError, match="epoch must be an int >= 0"):
        next(make_loader(split).epoch(-1))
