"""QR codes for payment requests, as PNG bytes and as a scalable SVG document.

Both use error correction level M (about 15 % of the symbol can be lost): the checkout page is scanned
from screens and printed counters, where L is too fragile and Q/H make the symbol denser than phone
cameras like for a ~100-character URI. The functions are pure (same input, same bytes), so the checkout
page can cache them: the ``*_cached`` variants keep the most recent symbols in memory, because a page and
its status polling ask for the same URI again and again.

The SVG is drawn from the module matrix by hand (one path of horizontal runs, no per-module elements and
no fixed physical units) so it stays small and scales crisply to any size.
"""

from __future__ import annotations

import io
from functools import lru_cache
from typing import Final

import qrcode
import qrcode.constants
import qrcode.exceptions
from qrcode.image.pil import PilImage

__all__ = ["QrError", "qr_matrix", "qr_png", "qr_png_cached", "qr_svg", "qr_svg_cached"]

ERROR_CORRECTION: Final = qrcode.constants.ERROR_CORRECT_M
_MAX_BOX_SIZE: Final = 100
_MAX_BORDER: Final = 40
_SVG_NOMINAL_MODULE_PX: Final = 8  # intrinsic size hint only; the viewBox makes the drawing scalable


class QrError(ValueError):
    """Data that does not fit in a QR code, or an unusable size."""


def _check_border(border: int) -> None:
    if isinstance(border, bool) or not isinstance(border, int) or not 0 <= border <= _MAX_BORDER:
        raise QrError(f"border must be an integer from 0 to {_MAX_BORDER} modules (4 is the standard)")


def _make(data: str, border: int) -> qrcode.QRCode[PilImage]:
    if not isinstance(data, str):
        raise QrError("QR data must be text")
    _check_border(border)
    code: qrcode.QRCode[PilImage] = qrcode.QRCode(
        error_correction=ERROR_CORRECTION, border=border, image_factory=PilImage
    )
    code.add_data(data)
    try:
        code.make(fit=True)
    except (qrcode.exceptions.DataOverflowError, ValueError):  # qrcode 8 says "Invalid version (was 41…)"
        raise QrError(f"{len(data)} characters do not fit in a QR code at error correction M") from None
    return code


def qr_matrix(data: str, *, border: int = 0) -> list[list[bool]]:
    """The module matrix (True = dark), row by row, with ``border`` light modules around it."""
    return [list(row) for row in _make(data, border).get_matrix()]


def qr_png(data: str, *, box_size: int = 8, border: int = 4) -> bytes:
    """A 1-bit PNG of ``data``: ``box_size`` pixels per module and a quiet zone of ``border`` modules."""
    if isinstance(box_size, bool) or not isinstance(box_size, int) or not 1 <= box_size <= _MAX_BOX_SIZE:
        raise QrError(f"box_size must be an integer from 1 to {_MAX_BOX_SIZE} pixels")
    code = _make(data, border)
    code.box_size = box_size
    buffer = io.BytesIO()
    code.make_image().save(buffer)
    return buffer.getvalue()


def qr_svg(data: str, *, border: int = 4) -> str:
    """A standalone SVG document of ``data``: one path in a ``viewBox`` measured in modules."""
    _check_border(border)
    matrix = _make(data, 0).get_matrix()
    size = len(matrix) + 2 * border
    runs: list[str] = []
    for y, row in enumerate(matrix):
        x = 0
        while x < len(row):
            if not row[x]:
                x += 1
                continue
            start = x
            while x < len(row) and row[x]:
                x += 1
            runs.append(f"M{start + border} {y + border}h{x - start}v1h-{x - start}z")
    pixels = size * _SVG_NOMINAL_MODULE_PX
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" version="1.1" viewBox="0 0 {size} {size}" '
        f'width="{pixels}" height="{pixels}" shape-rendering="crispEdges" role="img" aria-label="QR code">'
        f'<rect width="{size}" height="{size}" fill="#fff"/>'
        f'<path fill="#000" d="{"".join(runs)}"/>'
        "</svg>\n"
    )


@lru_cache(maxsize=256)
def _png_cached(data: str, box_size: int, border: int) -> bytes:
    return qr_png(data, box_size=box_size, border=border)


@lru_cache(maxsize=256)
def _svg_cached(data: str, border: int) -> str:
    return qr_svg(data, border=border)


def qr_png_cached(data: str, *, box_size: int = 8, border: int = 4) -> bytes:
    """:func:`qr_png` behind an LRU cache of the 256 most recent requests (the result is immutable)."""
    return _png_cached(data, box_size, border)


def qr_svg_cached(data: str, *, border: int = 4) -> str:
    """:func:`qr_svg` behind an LRU cache of the 256 most recent requests."""
    return _svg_cached(data, border)
