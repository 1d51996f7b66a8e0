"""QR codes: what a phone's decoder (zxing-cpp) reads back is exactly the payment URI, at level M."""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable

import pytest
import qrcode
import qrcode.constants
import zxingcpp
from PIL import Image

from gateway.payment_uri import (
    Bip21Request,
    Eip681Native,
    Eip681TokenTransfer,
    build_bip21,
    build_eip681,
)
from gateway.qr import QrError, qr_matrix, qr_png, qr_png_cached, qr_svg, qr_svg_cached

ETH_TO = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
TOKEN = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
URIS = {
    "bip21": build_bip21(
        Bip21Request(
            "bcrt1qcr8te4kr609gcawutmrza0j4xv80jy8zeqchgx", 150_000, "Кофейня «Алатау»", "Заказ #42 & чай"
        )
    ),
    "eip681-native": build_eip681(Eip681Native(ETH_TO, 31337, 12_345_000_000_000_000)),
    "eip681-token": build_eip681(Eip681TokenTransfer(TOKEN, 31337, ETH_TO, 25_000_000)),
}
SVG_NS = "{http://www.w3.org/2000/svg}"


def _decode(png: bytes) -> list[zxingcpp.Barcode]:
    image = Image.open(io.BytesIO(png))
    return list(zxingcpp.read_barcodes(image))


def _reference_matrix(data: str, level: int) -> list[list[bool]]:
    code = qrcode.QRCode(error_correction=level, border=0)
    code.add_data(data)
    code.make(fit=True)
    return [list(row) for row in code.get_matrix()]


@pytest.mark.parametrize("name", sorted(URIS))
def test_png_decodes_to_the_uri_at_level_m(name: str) -> None:
    uri = URIS[name]
    barcodes = _decode(qr_png(uri))
    assert len(barcodes) == 1
    assert barcodes[0].text == uri
    assert barcodes[0].ec_level == "M"


def test_png_geometry_follows_box_size_and_border() -> None:
    uri = URIS["eip681-native"]
    modules = len(qr_matrix(uri))
    image = Image.open(io.BytesIO(qr_png(uri, box_size=3, border=2)))
    assert image.format == "PNG"
    assert image.size == ((modules + 4) * 3, (modules + 4) * 3)
    assert image.getpixel((0, 0)) != 0  # the quiet zone is light
    assert _decode(qr_png(uri, box_size=3, border=2))[0].text == uri


@pytest.mark.parametrize("name", sorted(URIS))
def test_matrix_is_qrcodes_own_level_m_matrix(name: str) -> None:
    uri = URIS[name]
    assert qr_matrix(uri) == _reference_matrix(uri, qrcode.constants.ERROR_CORRECT_M)
    assert qr_matrix(uri) != _reference_matrix(uri, qrcode.constants.ERROR_CORRECT_L)


def _svg_cells(svg: str) -> tuple[int, set[tuple[int, int]]]:
    root = ET.fromstring(svg)  # noqa: S314 - our own output, not untrusted XML
    assert root.tag == f"{SVG_NS}svg"
    _, _, width, height = (int(v) for v in root.attrib["viewBox"].split())
    assert width == height
    paths = root.findall(f"{SVG_NS}path")
    assert len(paths) == 1
    cells: set[tuple[int, int]] = set()
    for x, y, run, back in re.findall(r"M(\d+) (\d+)h(\d+)v1h-(\d+)z", paths[0].attrib["d"]):
        assert run == back
        cells.update((int(x) + i, int(y)) for i in range(int(run)))
    return width, cells


@pytest.mark.parametrize("name", sorted(URIS))
def test_svg_is_a_scalable_document_of_the_level_m_matrix(name: str) -> None:
    uri = URIS[name]
    svg = qr_svg(uri)
    size, cells = _svg_cells(svg)
    matrix = _reference_matrix(uri, qrcode.constants.ERROR_CORRECT_M)
    border = 4
    assert size == len(matrix) + 2 * border
    expected = {(x + border, y + border) for y, row in enumerate(matrix) for x, on in enumerate(row) if on}
    assert cells == expected
    assert "mm" not in svg  # no physical units: it scales with its container


def test_svg_renders_to_a_decodable_image() -> None:
    """Rasterise the SVG's cells the naive way and let zxing read them: the drawing is the symbol."""
    uri = URIS["bip21"]
    size, cells = _svg_cells(qr_svg(uri))
    scale = 6
    image = Image.new("L", (size * scale, size * scale), 255)
    for x, y in cells:
        image.paste(0, (x * scale, y * scale, (x + 1) * scale, (y + 1) * scale))
    barcodes = zxingcpp.read_barcodes(image)
    assert [b.text for b in barcodes] == [uri]


def test_outputs_are_deterministic_and_cached_variants_agree() -> None:
    uri = URIS["eip681-token"]
    assert qr_png(uri) == qr_png(uri) == qr_png_cached(uri)
    assert qr_png_cached(uri) is qr_png_cached(uri)
    assert qr_svg(uri) == qr_svg_cached(uri)
    assert qr_png_cached(uri, box_size=2) == qr_png(uri, box_size=2)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: qr_png("x", box_size=0), "box_size must be an integer from 1 to 100"),
        (lambda: qr_png("x", box_size=True), "box_size must be an integer"),
        (lambda: qr_png("x", border=-1), "border must be an integer from 0 to 40"),
        (lambda: qr_svg("x", border=41), "border must be an integer from 0 to 40"),
        (lambda: qr_png(b"x"), "QR data must be text"),  # type: ignore[arg-type]
        (lambda: qr_svg("x" * 3000), "do not fit in a QR code"),
    ],
)
def test_refusals(call: Callable[[], object], message: str) -> None:
    with pytest.raises(QrError) as excinfo:
        call()
    assert message in str(excinfo.value)
