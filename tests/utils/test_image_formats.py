"""Images as people have them: each file below decodes to what a photo viewer shows, so that it gets the codes of
its plain twin (the same picture as an ordinary RGB file), or is refused in one line naming it.

Twins are made with PIL from ``tests/data/coffee.jpg``. Each case checks the decoded RGB pixels against the twin's
(exactly where the file is lossless, within JPEG's noise where it is not), that the file's pixels as stored are
NOT the twin's (so the case tests something), and that the model input and the codes of a small model (the
session's digits run exported to ONNX: the torch-free path) are the twin's. The last tests run the same files
through every decode path: ``dsh encode --images`` (a folder), ``Encoder.encode`` (paths and bytes) and the
service's ``/api/encode`` (uploads).
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dsh.errors import DataError
from dsh.utils.imageio import BACKGROUND, decode_image

DATA = Path(__file__).parent.parent / "data"


# -- pictures ------------------------------------------------------------------------------------------------------


def plain() -> np.ndarray:
    """The twin of every case: coffee.jpg as uint8[256, 384, 3]."""
    return np.asarray(Image.open(DATA / "coffee.jpg").convert("RGB"))


def with_hole(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(alpha, twin)``: a binary alpha (a transparent disc and border) and ``a`` with those pixels white."""
    h, w = a.shape[:2]
    yy, xx = np.mgrid[:h, :w]
    hole = ((yy - h / 2) ** 2 + (xx - w / 3) ** 2 < (h / 4) ** 2) | (xx < 10)
    twin = a.copy()
    twin[hole] = BACKGROUND
    return np.where(hole, 0, 255).astype(np.uint8), twin


def png16(a: np.ndarray) -> bytes:
    """A 16-bit PNG of ``uint16[H, W]`` (grey), ``[H, W, 3]`` (RGB) or ``[H, W, 4]`` (RGBA), written by hand: PIL
    does not write 16-bit colour PNGs."""
    h, w = a.shape[:2]
    ctype = {2: 0, 3: 2, 4: 6}[a.ndim if a.ndim == 2 else a.shape[2]]
    raw = b"".join(b"\0" + row.astype(">u2").tobytes() for row in a.reshape(h, -1))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, ctype, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def icc_rgb(red, green, blue) -> bytes:
    """A minimal ICC v2 display profile: these D50 colorants, sRGB's tone curve (a parametric curve)."""

    def s15(*v) -> bytes:
        return b"".join(struct.pack(">i", round(x * 65536)) for x in v)

    def pad(b: bytes) -> bytes:
        return b + b"\0" * (-len(b) % 4)

    text = b"dsh test profile"
    # textDescriptionType: ASCII count and text, then empty Unicode (language, count) and ScriptCode (code, count,
    # 67 bytes) parts
    desc = pad(b"desc" + b"\0" * 4 + struct.pack(">I", len(text) + 1) + text + b"\0" + b"\0" * (8 + 3 + 67))
    trc = pad(b"para" + b"\0" * 4 + struct.pack(">HH", 3, 0) + s15(2.4, 1 / 1.055, 0.055 / 1.055, 1 / 12.92, 0.04045))
    tags = [(b"desc", desc), (b"wtpt", b"XYZ " + b"\0" * 4 + s15(0.9642, 1.0, 0.8249)),
            (b"rXYZ", b"XYZ " + b"\0" * 4 + s15(*red)), (b"gXYZ", b"XYZ " + b"\0" * 4 + s15(*green)),
            (b"bXYZ", b"XYZ " + b"\0" * 4 + s15(*blue)), (b"rTRC", trc), (b"gTRC", trc), (b"bTRC", trc),
            (b"cprt", pad(b"text" + b"\0" * 4 + b"none\0"))]
    offset = 128 + 4 + 12 * len(tags)
    table, body = struct.pack(">I", len(tags)), b""
    for sig, data in tags:
        table += sig + struct.pack(">II", offset + len(body), len(data))
        body += data
    size = offset + len(body)
    header = (struct.pack(">I", size) + b"\0" * 4 + struct.pack(">I", 0x02100000) + b"mntrRGB XYZ " + b"\0" * 12
              + b"acsp" + b"\0" * 24 + struct.pack(">I", 0) + s15(0.9642, 1.0, 0.8249) + b"\0" * 48)
    assert len(header) == 128
    return header + table + body


# sRGB's colorants adapted to D50, as in the sRGB ICC profile
SRGB_RED, SRGB_GREEN, SRGB_BLUE = (0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), (0.1431, 0.0606, 0.7141)


def exif(orientation: int) -> bytes:
    e = Image.Exif()
    e[0x0112] = orientation
    return e.tobytes()


def stored_for(upright: np.ndarray, orientation: int) -> np.ndarray:
    """The pixels a camera stores for a picture shown as ``upright`` under EXIF ``orientation``, from the EXIF
    specification's words (what row 0 and column 0 of the stored image are on the shown one), not from PIL."""
    u = upright
    return {
        1: u,
        2: u[:, ::-1],  # mirrored left-right
        3: u[::-1, ::-1],  # turned 180 degrees
        4: u[::-1, :],  # mirrored top-bottom
        5: u.transpose(1, 0, 2),  # mirrored about the top-left to bottom-right diagonal
        6: np.rot90(u, 1),  # shown after turning 90 degrees clockwise: stored turned anticlockwise
        7: u[::-1, ::-1].transpose(1, 0, 2),  # mirrored about the other diagonal
        8: np.rot90(u, -1),  # shown after turning 90 degrees anticlockwise
    }[orientation]


def jpeg(a: np.ndarray, **kw) -> bytes:
    b = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(a)).save(b, "JPEG", quality=100, subsampling=0, **kw)
    return b.getvalue()


def encoded(im: Image.Image, fmt: str, **kw) -> bytes:
    b = io.BytesIO()
    im.save(b, fmt, **kw)
    return b.getvalue()


def as_stored(data: bytes) -> np.ndarray | None:
    """What a naive reader gets: the pixels as stored (no orientation, profile, scaling or background), and of an
    animation its last frame. ``None`` for a file whose stored pixels are the picture (a TIFF)."""
    im = Image.open(io.BytesIO(data))
    if im.format == "TIFF":
        return None
    if getattr(im, "n_frames", 1) > 1:
        im.seek(im.n_frames - 1)
        return np.asarray(im.convert("RGB"))
    return np.asarray(im)


def palette_with_hole() -> tuple[bytes, np.ndarray, np.ndarray]:
    """A palette PNG whose transparent entry's colour is green, ``(png, twin, stored as RGB)``."""
    p = Image.fromarray(plain()).quantize(255)  # entry 255 stays free for the transparent pixels
    pal = p.getpalette()[: 3 * 255] + [0, 255, 0]
    idx = np.asarray(p).copy()
    alpha, _ = with_hole(plain())
    idx[alpha == 0] = 255
    im = Image.fromarray(idx, "P")
    im.putpalette(pal)
    shown = np.asarray(im.convert("RGB")).copy()
    twin = shown.copy()
    twin[alpha == 0] = BACKGROUND
    return encoded(im, "PNG", transparency=255), twin, shown


def animated(fmt: str) -> tuple[bytes, np.ndarray]:
    """An animation of coffee then chelsea, ``(file, its first frame as RGB)``."""
    first = Image.fromarray(plain())
    second = Image.open(DATA / "chelsea.jpg").convert("RGB").crop((0, 0, 384, 256))
    if fmt == "GIF":
        first, second = first.quantize(256), second.quantize(256)
        twin = np.asarray(first.convert("RGB"))
        return encoded(first, "GIF", save_all=True, append_images=[second], duration=100, loop=0), twin
    return encoded(first, "WEBP", save_all=True, append_images=[second], duration=100, lossless=True), plain()


# case -> (file bytes, suffix, twin RGB, tolerance of the decoded pixels: 0 exact, else the largest mean difference)
def make_case(name: str) -> tuple[bytes, str, np.ndarray, float]:
    a = plain()
    if name.startswith("exif-jpeg-"):
        o = int(name.rsplit("-", 1)[1])
        return jpeg(stored_for(a, o), exif=exif(o)), ".jpg", np.asarray(Image.open(io.BytesIO(jpeg(a)))), 1.0
    if name == "exif-png-6":
        return encoded(Image.fromarray(np.ascontiguousarray(stored_for(a, 6))), "PNG", exif=exif(6)), ".png", a, 0
    if name == "exif-webp-8":
        data = encoded(Image.fromarray(np.ascontiguousarray(stored_for(a, 8))), "WEBP", lossless=True, exif=exif(8))
        return data, ".webp", a, 0
    if name == "cmyk-jpeg":
        return encoded(Image.fromarray(a).convert("CMYK"), "JPEG", quality=100), ".jpg", a, 1.5
    if name == "png-16-grey":
        grey = np.asarray(Image.fromarray(a).convert("L"))
        return png16(grey.astype(np.uint16) * 257), ".png", np.repeat(grey[..., None], 3, 2), 0
    if name == "png-16-rgba":
        alpha, twin = with_hole(a)
        return png16(np.dstack([a, alpha]).astype(np.uint16) * 257), ".png", twin, 0
    if name == "png-rgba":
        alpha, twin = with_hole(a)
        rgba = np.dstack([a, alpha]).copy()
        rgba[alpha == 0, :3] = (0, 0, 0)  # what dropping the alpha would show
        return encoded(Image.fromarray(rgba), "PNG"), ".png", twin, 0
    if name == "png-palette-alpha":
        data, twin, _ = palette_with_hole()
        return data, ".png", twin, 0
    if name == "gif-animated":
        data, twin = animated("GIF")
        return data, ".gif", twin, 0
    if name == "webp-animated":
        data, twin = animated("WEBP")
        return data, ".webp", twin, 0
    if name == "tiff":
        return encoded(Image.fromarray(a), "TIFF", compression="tiff_lzw"), ".tif", a, 0
    if name == "icc-swapped-primaries":
        # the file stores G, R, B and its profile says so (red's colorant is sRGB's green and the other way round)
        data = encoded(Image.fromarray(np.ascontiguousarray(a[..., [1, 0, 2]])), "PNG",
                       icc_profile=icc_rgb(SRGB_GREEN, SRGB_RED, SRGB_BLUE))
        return data, ".png", a, 1.5
    raise KeyError(name)


CASES = [f"exif-jpeg-{o}" for o in range(2, 9)] + [
    "exif-png-6", "exif-webp-8", "cmyk-jpeg", "png-16-grey", "png-16-rgba", "png-rgba", "png-palette-alpha",
    "gif-animated", "webp-animated", "tiff", "icc-swapped-primaries"]

# formats refused: one line naming the file and saying what it is
REFUSED = {
    "heic": (b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + bytes(range(256)) * 4, "HEIC"),
    "svg": (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8">'
            b'<rect width="8" height="8" fill="red"/></svg>\n', "SVG"),
}
IMAGE_FORMAT_REFUSALS = [*REFUSED, "heic upload"]


def differs(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape != b.shape or a.dtype != b.dtype or float(np.abs(a.astype(int) - b.astype(int)).mean()) > 5


def close(a: np.ndarray, b: np.ndarray, tolerance: float) -> bool:
    if a.shape != b.shape:
        return False
    d = np.abs(a.astype(int) - b.astype(int))
    return int(d.max()) == 0 if tolerance == 0 else float(d.mean()) <= tolerance


@pytest.fixture(scope="module")
def encoder(tmp_path_factory, digits_run):
    pytest.importorskip("onnxruntime")
    from dsh.runtime import Encoder
    from dsh.runtime.export import export_model

    path = tmp_path_factory.mktemp("formats") / "digits.onnx"
    export_model(digits_run, path)
    return Encoder.from_file(path, workers=1)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, tuple[Path, Path, float]]:
    """Each case's file and its twin (a PNG) in a folder of their own: name -> (file, twin file, tolerance)."""
    root = tmp_path_factory.mktemp("image-formats")
    out = {}
    for name in CASES:
        data, suffix, twin, tolerance = make_case(name)
        (root / name).mkdir()
        (root / name / f"file{suffix}").write_bytes(data)
        Image.fromarray(twin).save(root / name / "twin.png")
        out[name] = (root / name / f"file{suffix}", root / name / "twin.png", tolerance)
    return out


# -- each case -----------------------------------------------------------------------------------------------------


def test_the_hand_made_icc_profile_is_srgb_when_its_colorants_are():
    a = plain()
    same = encoded(Image.fromarray(a), "PNG", icc_profile=icc_rgb(SRGB_RED, SRGB_GREEN, SRGB_BLUE))
    assert close(decode_image(same, None, "RGB"), a, 1.0)


def test_an_embedded_srgb_profile_changes_nothing():
    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()  # as most cameras embed
    data = jpeg(plain())
    tagged = jpeg(plain(), icc_profile=srgb)
    assert Image.open(io.BytesIO(tagged)).info["icc_profile"] == srgb
    assert np.array_equal(decode_image(tagged, None, "RGB"), decode_image(data, None, "RGB"))


@pytest.mark.parametrize("name", CASES)
def test_a_picture_decodes_as_its_plain_twin(name, files, encoder):
    path, twin_path, tolerance = files[name]
    twin = np.asarray(Image.open(twin_path))
    data = path.read_bytes()
    naive = as_stored(data)
    assert naive is None or differs(naive, twin), "a naive read gives the twin already: the case tests nothing"
    got = decode_image(path, None, "RGB")
    assert close(got, twin, tolerance), (name, np.abs(got.astype(int) - twin.astype(int)).mean())
    assert np.array_equal(decode_image(data, None, "RGB"), got)  # bytes (an upload) as the file
    # the model's input (8x8 grey) and the codes, by the torch-free ONNX encoder, from the path and the bytes
    x_file, x_twin = encoder.prepare([path]), encoder.prepare([twin_path])
    assert np.abs(x_file.astype(int) - x_twin.astype(int)).max() <= (0 if tolerance == 0 else 3)
    codes = encoder.encode([path, data, twin_path]).codes
    assert np.array_equal(codes[0], codes[2]) and np.array_equal(codes[1], codes[2]), name


@pytest.mark.parametrize("kind", list(REFUSED))
def test_heic_and_svg_are_refused_in_one_line_naming_the_file(kind, tmp_path):
    data, what = REFUSED[kind]
    path = tmp_path / f"photo.{kind}"
    path.write_bytes(data)
    for source, name in ((path, str(path)), (data, f"<{len(data)} bytes>")):
        with pytest.raises(DataError) as e:
            decode_image(source, (8, 8), "L")
        message = str(e.value)
        assert "\n" not in message and name in message and what in message.replace(name, ""), message


# -- every decode path ---------------------------------------------------------------------------------------------

PATH_CASES = ["exif-jpeg-6", "exif-jpeg-5", "cmyk-jpeg", "png-16-grey", "png-palette-alpha", "gif-animated",
              "icc-swapped-primaries"]


def test_dsh_encode_of_a_folder_gives_each_file_its_twins_code(files, encoder, tmp_path):
    import shutil

    from dsh.cli import main
    from dsh.codes.codefile import load_codes

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in PATH_CASES:
        path, twin, _ = files[name]
        shutil.copy(path, folder / f"{name}-file{path.suffix}")
        shutil.copy(twin, folder / f"{name}-twin.png")
    out = tmp_path / "codes.npz"
    assert main(["encode", "--model", str(encoder.source), "--images", str(folder), "--out", str(out), "--quiet",
                 "--keep-u"]) == 0
    cf = load_codes(out)
    rows = {Path(p).name: i for i, p in enumerate(cf.paths)}
    assert len(rows) == 2 * len(PATH_CASES)
    for name in PATH_CASES:
        path, twin, _ = files[name]
        f, t = rows[f"{name}-file{path.suffix}"], rows[f"{name}-twin.png"]
        assert np.array_equal(cf.codes[f], cf.codes[t]), name
        # the same decode as the library's: the very same u
        np.testing.assert_allclose(cf.u[[f, t]], encoder.encode([path, twin]).u, rtol=0, atol=1e-6)


def test_the_service_decodes_uploads_as_files(files, encoder, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from dsh import HammingIndex
    from dsh.runtime import Searcher
    from dsh.serve import ServeSettings, create_app

    index = HammingIndex(encoder.nbits)
    index.add(encoder.encode([files[n][1] for n in PATH_CASES]).codes)
    client = TestClient(create_app(Searcher(index, encoder), ServeSettings(max_images=32)))
    uploads = []
    for name in PATH_CASES:
        path, twin, _ = files[name]
        uploads += [("image", (path.name, path.read_bytes())), ("image", ("twin.png", twin.read_bytes()))]
    r = client.post("/api/encode", params={"u": "true"}, files=uploads)
    assert r.status_code == 200, r.text
    codes = [c["hex"] for c in r.json()["codes"]]
    assert codes[0::2] == codes[1::2]
    # the same decode as the library's: the very same u for the same bytes
    lib = encoder.encode([data for _, (_, data) in uploads]).u
    np.testing.assert_allclose([c["u"] for c in r.json()["codes"]], lib, rtol=0, atol=1e-6)
    assert codes[1::2] == [c["hex"] for c in client.post(
        "/api/encode", files=[("image", ("t.png", files[n][1].read_bytes())) for n in PATH_CASES]).json()["codes"]]
    # a HEIC upload: one line naming the upload
    r = client.post("/api/encode", files=[("image", ("IMG_0001.HEIC", REFUSED["heic"][0]))])
    assert r.status_code == 415, r.text  # as for any image the service cannot decode
    message = r.json()["error"]["message"]
    assert "IMG_0001.HEIC" in message and "HEIF image" in message and "\n" not in message, message
    assert json.dumps(r.json()).count("Traceback") == 0
