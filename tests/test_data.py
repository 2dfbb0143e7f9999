"""Tests for ddpm_ref.data: shipped sample, CIFAR-10 archive handling (fabricated files only,
no network), image folders, pixel conversions, grids and the DDP-aware batch stream."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import pickle
import re
import shutil
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_ref import data

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# shipped sample
# --------------------------------------------------------------------------------------------


def test_sample_shapes_labels_and_indices():
    x, y, idx = data.load_sample("train", return_index=True)
    assert x.dtype == np.uint8 and x.shape == (1024, 32, 32, 3)
    assert y.dtype == np.int64 and y.shape == (1024,)
    assert np.array_equal(idx, np.arange(1024))
    # facts of the official order: image 0 is the frog, image 1 the truck
    assert data.CIFAR10_CLASSES[y[0]] == "frog" and data.CIFAR10_CLASSES[y[1]] == "truck"
    assert set(np.unique(y)) == set(range(10))
    xt, yt, it = data.load_sample("test", return_index=True)
    assert xt.shape == (256, 32, 32, 3) and yt.shape == (256,)
    assert np.array_equal(it, np.arange(256))
    # real photographs: wide pixel range, images differ from each other
    assert x.min() == 0 and x.max() == 255
    assert len({x[i].tobytes() for i in range(64)}) == 64


def test_sample_bad_split():
    with pytest.raises(ValueError, match="split"):
        data.load_sample("validation")


def test_sample_sha256_matches_readme():
    readme = (REPO / "ddpm_ref" / "assets" / "README.md").read_text()
    recorded = re.search(r"sha256 `([0-9a-f]{64})`", readme).group(1)
    actual = hashlib.sha256(data.SAMPLE_PATH.read_bytes()).hexdigest()
    assert actual == recorded
    size = int(re.search(r"File: ([\d,]+) bytes", readme).group(1).replace(",", ""))
    assert data.SAMPLE_PATH.stat().st_size == size


def _make_sample_module():
    spec = importlib.util.spec_from_file_location("make_sample", REPO / "tools" / "make_sample.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _lossless_source() -> Path | None:
    candidates = [os.environ.get("DDPM_CIFAR10_LOSSLESS", "")]
    candidates += [
        str(p / "shared" / "data" / "cifar10_lossless_subset.npz") for p in REPO.parents
    ]
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    return None


def test_make_sample_reproduces_shipped_file():
    src = _lossless_source()
    if src is None:
        pytest.skip("cifar10_lossless_subset.npz not available (set DDPM_CIFAR10_LOSSLESS)")
    built = _make_sample_module().build(src)
    with np.load(io.BytesIO(built)) as new, np.load(data.SAMPLE_PATH) as old:
        assert sorted(new.files) == sorted(old.files)
        for k in new.files:
            assert np.array_equal(new[k], old[k]), k
    with np.load(src) as s:  # and the sample really is the source's first images
        assert np.array_equal(s["x_train"][:1024], data.load_sample("train")[0])
    # byte-identical too, given the zlib the shipped file was built with (README)
    readme = (REPO / "ddpm_ref" / "assets" / "README.md").read_text()
    built_with = re.search(r"built with zlib ([\d.]+)", readme).group(1)
    if zlib.ZLIB_RUNTIME_VERSION == built_with:
        assert hashlib.sha256(built).digest() == hashlib.sha256(data.SAMPLE_PATH.read_bytes()).digest()


def test_make_sample_selection_rules():
    ms = _make_sample_module()
    rng = np.random.default_rng(0)
    src = {
        "x_train": rng.integers(0, 256, (1100, 32, 32, 3), dtype=np.uint8),
        "y_train": rng.integers(0, 10, 1100).astype(np.uint8),
        "train_index": np.arange(1100),
        "x_test": rng.integers(0, 256, (300, 32, 32, 3), dtype=np.uint8),
        "y_test": rng.integers(0, 10, 300).astype(np.uint8),
        "test_index": rng.permutation(np.arange(0, 600, 2)),  # out of order, with gaps
    }
    out = ms.select_sample(src)
    assert np.array_equal(out["test_index"], np.arange(0, 512, 2))
    order = np.argsort(src["test_index"])[:256]
    assert np.array_equal(out["x_test"], src["x_test"][order])
    bad = dict(src, train_index=np.arange(1, 1101))
    with pytest.raises(ValueError, match="train_index"):
        ms.select_sample(bad)
    # deterministic bytes
    assert ms.npz_bytes(out) == ms.npz_bytes(out)


# --------------------------------------------------------------------------------------------
# the official CIFAR-10 format, fabricated
# --------------------------------------------------------------------------------------------


def _write_batch(path: Path, images: np.ndarray, labels, protocol: int = 2, overrides=None):
    """A batch file in the official layout: pickled dict with bytes keys, data rows =
    1024 R + 1024 G + 1024 B values of a row-major 32x32 image."""
    n = images.shape[0]
    obj = {
        b"batch_label": b"fabricated batch",
        b"labels": [int(v) for v in labels],
        b"data": images.transpose(0, 3, 1, 2).reshape(n, 3072).copy(),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }
    obj.update(overrides or {})
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


@pytest.fixture
def small_batches(monkeypatch):
    """Official layout with 8 images per batch file instead of 10000."""
    monkeypatch.setattr(data.cifar10, "CIFAR10_IMAGES_PER_BATCH", 8)


def _fake_extracted(root: Path) -> tuple[np.ndarray, np.ndarray]:
    x, y = data.load_sample("train")
    d = root / data.CIFAR10_DIRNAME
    d.mkdir(parents=True)
    for i, name in enumerate(["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                              "data_batch_5", "test_batch"]):
        _write_batch(d / name, x[8 * i : 8 * i + 8], y[8 * i : 8 * i + 8])
    return x[:48], y[:48]


def test_read_batch_layout_roundtrip(tmp_path):
    x, y = data.load_sample("test")
    for protocol in (2, 4):
        p = tmp_path / f"b{protocol}"
        _write_batch(p, x[:20], y[:20], protocol=protocol)
        xi, yi = data.read_cifar10_batch(p, expected_images=20)
        assert xi.dtype == np.uint8 and np.array_equal(xi, x[:20])
        assert yi.dtype == np.int64 and np.array_equal(yi, y[:20])
    with pytest.raises(data.DataFileError, match=r"expected \[10000, 3072\]"):
        data.read_cifar10_batch(p)  # the official count is the default


def test_load_cifar10_from_extracted_dir(tmp_path, small_batches):
    x, y = _fake_extracted(tmp_path)
    xt, yt = data.load_cifar10(tmp_path, "train", verify_checksums=False)
    assert np.array_equal(xt, x[:40]) and np.array_equal(yt, y[:40])
    xs, ys = data.load_cifar10(tmp_path, "test", verify_checksums=False)
    assert np.array_equal(xs, x[40:48]) and np.array_equal(ys, y[40:48])
    with pytest.raises(ValueError, match="split"):
        data.load_cifar10(tmp_path, "val")


def test_fabricated_batches_fail_official_checksum(tmp_path, small_batches):
    _fake_extracted(tmp_path)
    with pytest.raises(data.DataFileError, match=r"data_batch_1.*MD5 [0-9a-f]{32}, expected c99c"):
        data.load_cifar10(tmp_path, "train")


def test_missing_batch_file_is_named(tmp_path, small_batches):
    _fake_extracted(tmp_path)
    (tmp_path / data.CIFAR10_DIRNAME / "data_batch_3").unlink()
    with pytest.raises(data.DataFileError, match="data_batch_3"):
        data.load_cifar10(tmp_path, "train", verify_checksums=False)


def test_truncated_batch_file(tmp_path, small_batches):
    _fake_extracted(tmp_path)
    p = tmp_path / data.CIFAR10_DIRNAME / "test_batch"
    p.write_bytes(p.read_bytes()[:5000])
    with pytest.raises(data.DataFileError, match=r"test_batch is truncated"):
        data.load_cifar10(tmp_path, "test", verify_checksums=False)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({b"data": None}, "'data' must be a uint8 array"),
        ({b"data": np.zeros((8, 3071), np.uint8)}, r"shape \[8, 3071\]"),
        ({b"data": np.zeros((8, 3072), np.float32)}, "uint8"),
        ({b"labels": [0] * 7}, "'labels' must be 8 integers"),
        ({b"labels": [10] * 8}, r"0\.\.9"),
    ],
)
def test_malformed_batch_contents(tmp_path, overrides, message):
    x, y = data.load_sample("test")
    p = tmp_path / "batch"
    _write_batch(p, x[:8], y[:8], overrides=overrides)
    with pytest.raises(data.DataFileError, match=message) as exc:
        data.read_cifar10_batch(p, expected_images=8)
    assert str(p) in str(exc.value)


def test_batch_missing_keys(tmp_path):
    p = tmp_path / "batch"
    p.write_bytes(pickle.dumps({b"batch_label": b"x"}, protocol=2))
    with pytest.raises(data.DataFileError, match=r"missing keys \['data', 'labels'\]"):
        data.read_cifar10_batch(p)
    p.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(data.DataFileError, match="expected a pickled dict"):
        data.read_cifar10_batch(p)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_batch_unpickler_refuses_code(tmp_path):
    p = tmp_path / "batch"
    p.write_bytes(pickle.dumps({b"data": _Evil()}))
    with pytest.raises(data.DataFileError, match="forbidden global"):
        data.read_cifar10_batch(p)


def test_nothing_there(tmp_path):
    with pytest.raises(data.DataFileError, match="download=True"):
        data.load_cifar10(tmp_path, "train")
    assert isinstance(data.DataFileError("x"), OSError)


def _fake_archive(tmp_path: Path, extra: dict | None = None) -> Path:
    src = tmp_path / "src"
    _fake_extracted(src)
    archive = tmp_path / "fake.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / data.CIFAR10_DIRNAME, arcname=data.CIFAR10_DIRNAME)
        for name, payload in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return archive


def test_md5_file(tmp_path):
    p = tmp_path / "f"
    payload = os.urandom(3 * (1 << 20) + 17)
    p.write_bytes(payload)
    assert data.md5_file(p, chunk_size=1 << 20) == hashlib.md5(payload).hexdigest()


def test_verify_archive_size_and_checksum(tmp_path, small_batches):
    archive = _fake_archive(tmp_path)
    md5, size = hashlib.md5(archive.read_bytes()).hexdigest(), archive.stat().st_size
    assert data.verify_archive(archive, md5=md5, size=size) == archive
    truncated = tmp_path / "trunc.tar.gz"
    truncated.write_bytes(archive.read_bytes()[: size // 2])
    with pytest.raises(data.DataFileError, match=rf"truncated: {size // 2} bytes, expected {size}"):
        data.verify_archive(truncated, md5=md5, size=size)
    corrupted = tmp_path / "corrupt.tar.gz"
    raw = bytearray(archive.read_bytes())
    raw[size // 2] ^= 0xFF
    corrupted.write_bytes(bytes(raw))
    with pytest.raises(data.DataFileError, match=rf"corrupted: MD5 [0-9a-f]{{32}}, expected {md5}"):
        data.verify_archive(corrupted, md5=md5, size=size)
    with pytest.raises(data.DataFileError, match="not found"):
        data.verify_archive(tmp_path / "nope.tar.gz")


def test_official_archive_constants():
    assert data.CIFAR10_MD5 == "c58f30108f718f92721af3b95e74349a"
    assert data.CIFAR10_ARCHIVE_SIZE == 170_498_071
    assert data.CIFAR10_URL.endswith("/~kriz/cifar-10-python.tar.gz")


def test_truncated_archive_in_root_is_rejected(tmp_path, small_batches):
    # a (fabricated, hence too small) archive where the official one is expected
    archive = _fake_archive(tmp_path)
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(archive, root / data.CIFAR10_ARCHIVE_NAME)
    with pytest.raises(data.DataFileError, match=r"truncated: \d+ bytes, expected 170498071"):
        data.load_cifar10(root, "train")


def test_download_from_file_url_verifies_and_extracts(tmp_path, small_batches):
    archive = _fake_archive(tmp_path)
    md5, size = hashlib.md5(archive.read_bytes()).hexdigest(), archive.stat().st_size
    root = tmp_path / "root"
    out = data.download_cifar10(root, url=archive.as_uri(), md5=md5, size=size, progress=False)
    assert out == root / data.CIFAR10_DIRNAME
    assert (root / data.CIFAR10_ARCHIVE_NAME).is_file()
    assert not list(root.glob("*.part")) and not list(root.glob(".cifar10-extract-*"))
    x, y = data.load_cifar10(root, "train", verify_checksums=False)
    assert np.array_equal(x, data.load_sample("train")[0][:40])
    # a second call reuses the verified archive (the URL is no longer needed)
    data.download_cifar10(root, url="file:///nonexistent", md5=md5, size=size, progress=False)


def test_download_with_wrong_checksum_leaves_nothing(tmp_path, small_batches):
    archive = _fake_archive(tmp_path)
    size = archive.stat().st_size
    root = tmp_path / "root"
    with pytest.raises(data.DataFileError, match="corrupted: MD5"):
        data.download_cifar10(root, url=archive.as_uri(), md5="0" * 32, size=size, progress=False)
    assert list(root.iterdir()) == []
    with pytest.raises(data.DataFileError, match="download of .* failed"):
        data.download_cifar10(root, url=(tmp_path / "missing").as_uri(), progress=False)


def test_archive_with_foreign_member_is_refused(tmp_path, small_batches):
    archive = _fake_archive(tmp_path, extra={"../evil.txt": b"x"})
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(data.DataFileError, match="unexpected member"):
        data.extract_cifar10(archive, root)
    assert not (tmp_path / "evil.txt").exists()
    assert not (root / data.CIFAR10_DIRNAME).exists()


def test_archive_that_is_not_gzip(tmp_path):
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"definitely not gzip" * 100)
    with pytest.raises(data.DataFileError, match="cannot extract"):
        data.extract_cifar10(bad, tmp_path)


# --------------------------------------------------------------------------------------------
# image folders
# --------------------------------------------------------------------------------------------


def _image_tree(root: Path, x: np.ndarray, y: np.ndarray, fmt: dict[str, str]):
    for i in range(len(x)):
        cls = data.CIFAR10_CLASSES[y[i]]
        (root / cls).mkdir(parents=True, exist_ok=True)
        ext = fmt.get(cls, "png")
        Image.fromarray(x[i]).save(root / cls / f"{i:04d}.{ext}")


def test_image_folder_png_is_exact_and_ordered(tmp_path):
    x, y = data.load_sample("train")
    x, y = x[:30], y[:30]
    _image_tree(tmp_path, x, y, {})
    (tmp_path / "frog" / "notes.txt").write_text("ignored")
    (tmp_path / "frog" / ".hidden.png").write_bytes(b"ignored")
    xi, yi, info = data.load_image_folder(tmp_path, return_info=True, progress=False)
    # folder classes are sorted names; map back to check every image is exact
    names = info["classes"]
    assert names == sorted({data.CIFAR10_CLASSES[v] for v in y})
    for img, lab, f in zip(xi, yi, info["files"], strict=True):
        i = int(Path(f).stem)
        assert np.array_equal(img, x[i]) and names[lab] == data.CIFAR10_CLASSES[y[i]]
    assert info["lossless"] is True
    # with the official class list, labels are the CIFAR-10 labels
    present = [c for c in data.CIFAR10_CLASSES if c in names]
    xi2, yi2 = data.load_image_folder(tmp_path, classes=present, progress=False)
    assert sorted(yi2.tolist()) == sorted(present.index(data.CIFAR10_CLASSES[v]) for v in y)


def test_image_folder_jpeg_is_marked_lossy(tmp_path):
    x, y = data.load_sample("train")
    _image_tree(tmp_path, x[:10], y[:10], {data.CIFAR10_CLASSES[y[0]]: "jpg"})
    xi, _, info = data.load_image_folder(tmp_path, return_info=True, progress=False)
    assert info["lossless"] is False and xi.shape == (10, 32, 32, 3)


def test_image_folder_conversions(tmp_path):
    (tmp_path / "a").mkdir()
    gray = np.arange(32 * 32, dtype=np.uint8).reshape(32, 32)
    Image.fromarray(gray, mode="L").save(tmp_path / "a" / "0.png")
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 10
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a" / "1.png")
    xi, yi = data.load_image_folder(tmp_path, progress=False)
    assert np.array_equal(xi[0], np.stack([gray] * 3, -1))
    assert (xi[1][..., 0] == 200).all() and (xi[1][..., 1:] == 0).all()  # alpha dropped
    assert yi.tolist() == [0, 0]


def test_image_folder_errors(tmp_path):
    (tmp_path / "a").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a" / "ok.png")
    Image.fromarray(np.zeros((32, 30, 3), np.uint8)).save(tmp_path / "a" / "wide.png")
    with pytest.raises(data.DataFileError, match=r"wide\.png: image is 30x32.*expected 32x32"):
        data.load_image_folder(tmp_path, progress=False)
    (tmp_path / "a" / "wide.png").unlink()
    assert data.load_image_folder(tmp_path, image_size=(32, 32), progress=False)[0].shape[0] == 1
    with pytest.raises(data.DataFileError, match=r"ok\.png: image is 32x32.*expected 64x64"):
        data.load_image_folder(tmp_path, image_size=64, progress=False)
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(data.DataFileError, match=r"broken\.png: cannot read the image \(UnidentifiedImageError"):
        data.load_image_folder(tmp_path, progress=False)
    (tmp_path / "a" / "broken.png").unlink()
    with pytest.raises(ValueError, match=r"class folders \['b'\] not found"):
        data.load_image_folder(tmp_path, classes=["a", "b"], progress=False)
    empty = tmp_path / "empty"
    (empty / "c").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images"):
        data.load_image_folder(empty, progress=False)
    with pytest.raises(ValueError, match="not a directory"):
        data.load_image_folder(tmp_path / "missing", progress=False)
    with pytest.raises(ValueError, match="image_size"):
        data.load_image_folder(tmp_path, image_size=(32, 0), progress=False)


# --------------------------------------------------------------------------------------------
# pixel conversions and grids
# --------------------------------------------------------------------------------------------


def test_uint8_roundtrip_every_value():
    v = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=-1)
    x = data.from_uint8(v)
    assert x.dtype == torch.float32 and x.shape == (1, 3, 16, 16)
    assert x.min().item() == -1.0 and x.max().item() == 1.0
    expected = torch.from_numpy(v.astype(np.float64) / 127.5 - 1).permute(0, 3, 1, 2)
    assert torch.allclose(x.double(), expected, atol=1e-7, rtol=0)
    assert np.array_equal(data.to_uint8(x), v)
    # from torch input, single image
    assert torch.equal(data.from_uint8(torch.from_numpy(v[0])), x[0])
    assert np.array_equal(data.to_uint8(x[0]), v[0])


def test_to_uint8_rounding_and_clipping():
    # against an independent float64 numpy evaluation of clip(round((x + 1) * 127.5))
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = 2.4 * x - 1.2
    want = np.clip(np.round((x.numpy() + 1) * 127.5), 0, 255).astype(np.uint8)
    assert np.array_equal(data.to_uint8(x), want.transpose(0, 2, 3, 1))
    x = torch.tensor([-3.0, -1.0, 0.0, 1.0, 7.0]).reshape(1, 1, 1, 5).expand(1, 3, 1, 5)
    assert data.to_uint8(x)[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255]
    # layout: channel c of NCHW lands in the last axis
    x = torch.zeros(2, 3, 4, 5)
    x[:, 1] = 1.0
    out = data.to_uint8(x)
    assert out.shape == (2, 4, 5, 3) and (out[..., 1] == 255).all() and (out[..., 0] == 128).all()


def test_conversion_validation():
    with pytest.raises(ValueError, match="NaN"):
        data.to_uint8(torch.full((1, 3, 2, 2), float("nan")))
    with pytest.raises(ValueError, match="floating-point"):
        data.to_uint8(torch.zeros(1, 3, 2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        data.to_uint8(torch.zeros(1, 4, 2, 2))
    with pytest.raises(ValueError, match="uint8"):
        data.from_uint8(np.zeros((1, 2, 2, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        data.from_uint8(np.zeros((1, 3, 2, 2), np.uint8))


def test_make_grid_and_png(tmp_path):
    x, _ = data.load_sample("train")
    g = data.make_grid(x[:10], nrow=4, padding=2, pad_value=255)
    assert g.shape == (3 * 34 + 2, 4 * 34 + 2, 3) and g.dtype == np.uint8
    for i in range(10):
        r, c = divmod(i, 4)
        assert np.array_equal(g[2 + 34 * r : 34 * (r + 1), 2 + 34 * c : 34 * (c + 1)], x[i])
    assert (g[:2] == 255).all() and (g[-34:, 2 + 34 * 2 :] == 255).all()  # border, empty cells
    assert data.make_grid(x[:3], nrow=8, padding=0).shape == (32, 96, 3)
    p = data.save_image_grid(x[:10], tmp_path / "sub" / "grid.png", nrow=4, pad_value=255)
    assert np.array_equal(np.asarray(Image.open(p).convert("RGB")), g)
    with pytest.raises(ValueError, match="nrow"):
        data.make_grid(x[:2], nrow=0)
    with pytest.raises(ValueError, match="uint8"):
        data.make_grid(x[:2].astype(np.float32))
    with pytest.raises(ValueError, match="at least one"):
        data.make_grid(x[:0])


def test_image_dataset():
    x, y = data.load_sample("test")
    ds = data.ImageDataset(x[:5], y[:5])
    assert len(ds) == 5
    xi, yi = ds[3]
    assert torch.equal(xi, data.from_uint8(x[3])) and yi.item() == y[3]
    loader = torch.utils.data.DataLoader(ds, batch_size=5)
    xb, yb = next(iter(loader))
    assert torch.equal(xb, data.from_uint8(x[:5])) and yb.tolist() == y[:5].tolist()
    assert data.ImageDataset(x[:2])[1][1].item() == 0
    with pytest.raises(ValueError, match="labels"):
        data.ImageDataset(x[:5], y[:4])


# --------------------------------------------------------------------------------------------
# BatchStream
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def images():
    return data.load_sample("train")[0][:100]  # N = 100: batches of 16 cross epoch ends


def _take(stream, k):
    return [stream.next() for _ in range(k)]


@pytest.mark.parametrize("world_size", [2, 4])
def test_ranks_union_equals_single_process(images, world_size):
    single = data.BatchStream(images, batch_size=16, seed=3)
    ranks = [
        data.BatchStream(images, batch_size=16, seed=3, rank=r, world_size=world_size)
        for r in range(world_size)
    ]
    for _ in range(15):  # 240 samples: 2.4 epochs, several batches straddle an epoch end
        want = single.next()
        parts = [s.next() for s in ranks]
        assert all(p.shape == (16 // world_size, 3, 32, 32) for p in parts)
        assert torch.equal(torch.cat(parts), want)
    assert all(s.state_dict() == single.state_dict() for s in ranks)


def test_stream_order_and_flips(images):
    s = data.BatchStream(images, batch_size=20, seed=0)
    idx, flips, batches = [], [], []
    for _ in range(10):  # two epochs exactly
        x, i, f = s.next_with_indices()
        idx.append(i)
        flips.append(f)
        batches.append(x)
    idx, flips = torch.cat(idx), torch.cat(flips)
    for e in range(2):  # each epoch is a permutation
        assert sorted(idx[100 * e : 100 * (e + 1)].tolist()) == list(range(100))
    assert not torch.equal(idx[:100], idx[100:])  # reshuffled each epoch
    assert 60 <= int(flips.sum()) <= 140  # Binomial(200, 1/2): mean 100, sd 7
    x = torch.cat(batches)
    ref = data.from_uint8(images)[idx]
    ref[flips] = ref[flips].flip(-1)  # left-right flip = reverse the width axis
    assert torch.equal(x, ref)
    assert x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    assert s.state_dict()["epoch"] == 2 and s.state_dict()["position"] == 0
    # no flips when disabled; same order
    s2 = data.BatchStream(images, batch_size=20, seed=0, flip=False)
    _, i2, f2 = s2.next_with_indices()
    assert torch.equal(i2, idx[:20]) and not f2.any()


def test_stream_seeds(images):
    a = _take(data.BatchStream(images, 16, seed=1), 3)
    b = _take(data.BatchStream(images, 16, seed=1), 3)
    c = _take(data.BatchStream(images, 16, seed=2), 3)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])


def test_resume_exact(images):
    ref = data.BatchStream(images, batch_size=16, seed=5)
    _take(ref, 7)
    state = ref.state_dict()
    assert state["step"] == 7 and state["epoch"] == 1 and state["position"] == 12
    buf = io.BytesIO()
    torch.save(state, buf)  # checkpointable as plain python
    buf.seek(0)
    restored = torch.load(buf, weights_only=True)
    fresh = data.BatchStream(images, batch_size=16, seed=5)
    fresh.load_state_dict(restored)
    for want, got in zip(_take(ref, 6), _take(fresh, 6), strict=True):
        assert torch.equal(want, got)


def test_resume_on_other_world_size(images):
    ref = data.BatchStream(images, batch_size=16, seed=9)
    _take(ref, 4)
    state = ref.state_dict()
    ranks = [data.BatchStream(images, 16, seed=9, rank=r, world_size=2) for r in range(2)]
    for s in ranks:
        s.load_state_dict(state)
    for _ in range(5):
        assert torch.equal(torch.cat([s.next() for s in ranks]), ref.next())


def test_stream_validation(images):
    s = data.BatchStream(images, 16, seed=0)
    with pytest.raises(ValueError, match="seed=0 but this stream has seed=1"):
        data.BatchStream(images, 16, seed=1).load_state_dict(s.state_dict())
    with pytest.raises(ValueError, match="batch_size"):
        data.BatchStream(images, 32, seed=0).load_state_dict(s.state_dict())
    with pytest.raises(ValueError, match="lacks keys"):
        s.load_state_dict({"epoch": 0})
    bad = dict(s.state_dict(), position=3)
    with pytest.raises(ValueError, match="batch boundary"):
        s.load_state_dict(bad)
    with pytest.raises(ValueError, match="not divisible"):
        data.BatchStream(images, 16, seed=0, world_size=3)
    with pytest.raises(ValueError, match="rank"):
        data.BatchStream(images, 16, seed=0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="uint8"):
        data.BatchStream(images.astype(np.float32), 16, seed=0)
    with pytest.raises(ValueError, match="seed >= 0"):
        data.BatchStream(images, 16, seed=-1)
    with pytest.raises(ValueError, match="batch_size must be an int"):
        data.BatchStream(images, 16.0, seed=0)
