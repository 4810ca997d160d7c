"""What a `/v1/detect` upload must be before any pixel is decoded, and decoding it within limits.

Threat model: an unauthenticated or authenticated client that sends whatever bytes it likes: a
file of another type behind an image content type, a decompression (pixel) bomb whose header
claims more pixels than the service can hold, a header Pillow and a hand-written parser read
differently, a multipart body with many parts or no image part. Each is refused with the HTTP
status a client can act on (`UploadRefused.status`: 413 too large, 415 wrong type, 422 not an
image) before the work it would cost: the pixel count is read from the file's own header (PNG
IHDR, JPEG start-of-frame) by the parser below, not from Pillow, and only a file whose header
passes is handed to Pillow, restricted to the declared format, which must agree on the size.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from secmlops.errors import UploadRefused

# File signatures of the accepted types: the declared content type must match the bytes.
MAGIC = {"image/jpeg": b"\xff\xd8\xff", "image/png": b"\x89PNG\r\n\x1a\n"}
PIL_FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG"}
# Smaller images hold no pedestrian a detector could see (and leave the 3x3 monitoring
# features undefined).
MIN_SIDE = 16
# A progressive JPEG costs a pass over the whole image per scan, and nothing else bounds their
# number: 3000 repeated scans of a 4000x4000 black frame (187 KB) took 26 s to decode. Encoders
# write about 10; an EXIF thumbnail adds one or two.
MAX_JPEG_SCANS = 64
# The form field that carries the image, and how many parts a form may have at all.
IMAGE_FIELD = "image"
MAX_PARTS = 4
# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic): C0-CF except
# DHT (C4), JPG (C8) and DAC (CC), which share the range.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers that stand alone (no length field): TEM, RST0-7, SOI.
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})


@dataclass(frozen=True)
class Upload:
    """The image part of a multipart form: its declared type and its bytes."""

    content_type: str
    data: bytes


def image_part(body: bytes, content_type_header: str, max_bytes: int) -> Upload:
    """The `image` field of a `multipart/form-data` body.

    Raises:
        UploadRefused: 415 not a multipart form; 422 no boundary, malformed form, more than
            MAX_PARTS parts, no `image` part or two of them; 413 the image is over `max_bytes`.
    """
    form_type, params = parse_options_header(content_type_header)
    if form_type != b"multipart/form-data":
        raise UploadRefused(415, "send the image as multipart/form-data, field 'image'")
    boundary = params.get(b"boundary")
    if not boundary:
        raise UploadRefused(422, "multipart/form-data without a boundary")
    parts: list[dict[str, bytearray | dict[str, str]]] = []
    field, value = bytearray(), bytearray()

    def part_begin() -> None:
        if len(parts) >= MAX_PARTS:
            raise UploadRefused(422, f"a form of more than {MAX_PARTS} parts")
        parts.append({"headers": {}, "data": bytearray()})

    def header_end() -> None:
        headers = parts[-1]["headers"]
        assert isinstance(headers, dict)
        headers[field.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
        field.clear()
        value.clear()

    def part_data(data: bytes, start: int, end: int) -> None:
        chunk = parts[-1]["data"]
        assert isinstance(chunk, bytearray)
        chunk += data[start:end]

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": part_begin,
            "on_header_field": lambda d, s, e: field.extend(d[s:e]),
            "on_header_value": lambda d, s, e: value.extend(d[s:e]),
            "on_header_end": header_end,
            "on_part_data": part_data,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise UploadRefused(422, f"malformed multipart form ({exc})") from None
    images = []
    for part in parts:
        headers = part["headers"]
        assert isinstance(headers, dict)
        _, disposition = parse_options_header(headers.get("content-disposition", ""))
        if disposition.get(b"name") == IMAGE_FIELD.encode():
            images.append(part)
    if len(images) != 1:
        found = "no" if not images else str(len(images))
        raise UploadRefused(422, f"the form has {found} '{IMAGE_FIELD}' parts; send exactly one")
    headers, data = images[0]["headers"], images[0]["data"]
    assert isinstance(headers, dict) and isinstance(data, bytearray)
    if len(data) > max_bytes:
        raise UploadRefused(413, f"image larger than {max_bytes} bytes")
    declared = headers.get("content-type", "").split(";")[0].strip().lower()
    return Upload(declared, bytes(data))


def header_size(upload: Upload) -> tuple[int, int]:
    """(width, height) as the file's own header states it, read without decoding.

    Raises:
        UploadRefused: 415 a type other than JPEG or PNG, or bytes of another type; 422 a header
            that is truncated or states no size, or a JPEG of more than MAX_JPEG_SCANS scans.
    """
    if upload.content_type not in MAGIC:
        raise UploadRefused(
            415, f"unsupported content type {upload.content_type!r}; send JPEG or PNG"
        )
    if not upload.data.startswith(MAGIC[upload.content_type]):
        raise UploadRefused(415, f"the bytes are not a {upload.content_type} file")
    if upload.content_type == "image/png":
        return _png_size(upload.data)
    # Byte stuffing keeps FF DA out of entropy-coded data: each occurrence starts a scan.
    scans = upload.data.count(b"\xff\xda")
    if scans > MAX_JPEG_SCANS:
        raise UploadRefused(422, f"a JPEG of {scans} scans; at most {MAX_JPEG_SCANS} are decoded")
    return _jpeg_size(upload.data)


def decode(upload: Upload, max_pixels: int) -> torch.Tensor:
    """The image as uint8 [H,W,3] (RGB), decoded only after its header passed `max_pixels`.

    Raises:
        UploadRefused: 413 more than `max_pixels` pixels (a pixel bomb), 415/422 as in
            `header_size`, 422 a side under MIN_SIDE, bytes Pillow cannot decode or whose size
            it reads differently.
    """
    width, height = header_size(upload)
    if width * height > max_pixels:
        raise UploadRefused(413, f"image has {width}x{height} pixels; limit {max_pixels}")
    if min(width, height) < MIN_SIDE:
        raise UploadRefused(
            422, f"image of {width}x{height} pixels; send at least {MIN_SIDE}x{MIN_SIDE}"
        )
    try:
        with Image.open(io.BytesIO(upload.data), formats=[PIL_FORMATS[upload.content_type]]) as im:
            if im.size != (width, height):  # two parsers disagreeing is an attack on one of them
                raise UploadRefused(
                    422, f"the header says {width}x{height}, the decoder {im.size[0]}x{im.size[1]}"
                )
            im.load()
            rgb = im if im.mode == "RGB" else im.convert("RGB")
            pixels = np.array(rgb)  # writable: torch refuses to share a read-only buffer
    except UploadRefused:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise UploadRefused(422, f"cannot decode the image ({exc})") from None
    return torch.from_numpy(pixels)


def _png_size(data: bytes) -> tuple[int, int]:
    # The IHDR chunk must come first (PNG spec 5.6): length 13, type, width, height.
    if len(data) < 24 or data[8:16] != b"\x00\x00\x00\x0dIHDR":
        raise UploadRefused(422, "cannot decode the image (PNG without a leading IHDR chunk)")
    width, height = struct.unpack(">II", data[16:24])
    if not width or not height:
        raise UploadRefused(422, f"cannot decode the image (PNG of {width}x{height} pixels)")
    return width, height


def _jpeg_size(data: bytes) -> tuple[int, int]:
    position = 2  # after SOI
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            break
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte before a marker
            position += 1
            continue
        if marker in _JPEG_STANDALONE:
            position += 2
            continue
        (length,) = struct.unpack(">H", data[position + 2 : position + 4])
        if length < 2:
            break
        if marker in _JPEG_SOF:
            if position + 9 > len(data) or length < 7:
                break
            height, width = struct.unpack(">HH", data[position + 5 : position + 9])
            if not width or not height:  # height 0: defined later by DNL, never supported
                raise UploadRefused(
                    422, f"cannot decode the image (JPEG frame of {width}x{height} pixels)"
                )
            return width, height
        if marker == 0xDA:  # start of scan before any frame header
            break
        position += 2 + length
    raise UploadRefused(422, "cannot decode the image (JPEG without a readable frame header)")
