"""Reading a payment request from a QR code image, as a wallet's camera would.

Decoding uses zxing-cpp (the ``zxingcpp`` package), independent of the ``qrcode`` library the gateway draws
its codes with, so a code the checkout page shows is known to scan. zxing-cpp is imported only when an
image is actually read: the rest of the wallet does not need it.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

__all__ = ["QrReadError", "read_qr_text"]


class QrReadError(ValueError):
    """The file is not a readable image, holds no QR code, or holds several different ones."""


def read_qr_text(path: Path) -> str:
    """The text of the one QR code in the image at ``path`` (PNG, or any format Pillow opens)."""
    try:
        import zxingcpp  # optional: only reading images needs it
    except ImportError:
        raise QrReadError("reading QR images needs the zxing-cpp package (pip install zxing-cpp)") from None
    try:
        with Image.open(path) as image:
            image.load()
            barcodes = zxingcpp.read_barcodes(image)
    except FileNotFoundError:
        raise QrReadError(f"{path}: no such file") from None
    except UnidentifiedImageError:
        raise QrReadError(f"{path}: not an image Pillow can read") from None
    except OSError as exc:
        raise QrReadError(f"{path}: cannot read the image ({exc.strerror or exc})") from None
    qr = zxingcpp.BarcodeFormat.QRCode
    texts = list(
        dict.fromkeys(code.text for code in barcodes if code.format == qr and code.valid and code.text)
    )
    if not texts:
        raise QrReadError(f"{path}: no readable QR code in the image")
    if len(texts) > 1:
        raise QrReadError(f"{path}: {len(texts)} different QR codes in the image; crop it to the one to pay")
    return texts[0]
