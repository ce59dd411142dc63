"""Every input type and odd image mode becomes an upright RGB image of the right size."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from gradloc.data.preprocess import ImageError, open_image, prepare, to_rgb_tensor


def save(tmp_path, name, im, **kw):
    p = tmp_path / name
    im.save(p, **kw)
    return p


def test_modes(tmp_path):
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 0] = 200
    cases = {
        "grey.png": Image.fromarray(rgb[..., 0]),
        "rgba.png": Image.fromarray(np.dstack([rgb, np.full((20, 30), 255, np.uint8)])),
        "palette.png": Image.fromarray(rgb).convert("P"),
        "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
        "rgb.jpg": Image.fromarray(rgb),
    }
    for name, im in cases.items():
        out = open_image(save(tmp_path, name, im))
        assert out.mode == "RGB" and out.size == (30, 20), name
    assert np.asarray(open_image(tmp_path / "rgb.jpg"))[..., 0].mean() > 150


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    arr = np.full((8, 8), 32768, np.uint16)
    p = save(tmp_path, "deep.png", Image.fromarray(arr))
    val = np.asarray(open_image(p))[0, 0]
    assert 120 <= val[0] <= 135 and val[0] == val[1] == val[2]


def test_transparent_pixels_become_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    p = save(tmp_path, "clear.png", Image.fromarray(rgba, "RGBA"))
    assert np.asarray(open_image(p)).min() == 255


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (40, 10), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    p = tmp_path / "rot.jpg"
    im.save(p, exif=exif)
    assert open_image(p).size == (10, 40)


@pytest.mark.parametrize("content,reason", [
    (b"", "empty"), (b"hello world", "not an image"),
])
def test_bad_files_give_reasons(tmp_path, content, reason):
    p = tmp_path / "bad.png"
    p.write_bytes(content)
    with pytest.raises(ImageError, match=reason):
        open_image(p)


def test_truncated_jpeg(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.randint(0, 255, (64, 64, 3), np.uint8)).save(buf, "JPEG")
    p = tmp_path / "cut.jpg"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError, match="corrupt or truncated"):
        open_image(p)


def test_pixel_limit(tmp_path):
    p = save(tmp_path, "big.png", Image.new("RGB", (200, 100)))
    with pytest.raises(ImageError, match="too large"):
        open_image(p, max_pixels=10_000)
    assert open_image(p, max_pixels=20_000).size == (200, 100)


def test_array_and_tensor_inputs():
    arr = np.random.randint(0, 255, (50, 70, 3), np.uint8)
    t_arr = to_rgb_tensor(arr)
    assert t_arr.shape == (3, 50, 70) and t_arr.dtype == torch.uint8
    assert torch.equal(to_rgb_tensor(torch.from_numpy(arr).permute(2, 0, 1)), t_arr)
    f = to_rgb_tensor(torch.from_numpy(arr).permute(2, 0, 1).float() / 255)
    assert (f.int() - t_arr.int()).abs().max() <= 1
    assert to_rgb_tensor(arr[..., 0]).shape == (3, 50, 70)
    assert torch.equal(to_rgb_tensor(Image.fromarray(arr)), t_arr)
    with pytest.raises(ImageError):
        to_rgb_tensor(np.zeros((3, 3, 7), np.uint8))
    with pytest.raises(ImageError):
        to_rgb_tensor(42)


def test_prepare_resizes_with_antialias_and_keeps_size():
    # A fine checkerboard averages to grey with antialiasing (aliasing would keep 0/255).
    board = (np.indices((320, 320)).sum(0) % 2 * 255).astype(np.uint8)
    x, size, work = prepare(np.dstack([board] * 3))
    assert work is None  # no multi-scale copy unless asked for
    assert x.shape == (3, 32, 32) and size == (320, 320)
    assert 100 < x.float().mean() < 155 and x.float().std() < 20


@pytest.mark.parametrize("image", [np.zeros((0, 0, 3), np.uint8), np.zeros((0, 7), np.uint8),
                                   torch.zeros(3, 5, 0, dtype=torch.uint8), Image.new("RGB", (0, 4))])
def test_zero_size_images_get_a_clear_error(image):
    from gradloc.data.preprocess import ImageError, to_rgb_tensor
    with pytest.raises(ImageError, match="image has no pixels"):
        to_rgb_tensor(image)
