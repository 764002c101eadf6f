"""A camera's MakerNote (lens, serial number, AF points, ...) kept readable when the EXIF around it is laid out
anew. Canon's, Sony's, Panasonic's and most others are an IFD whose entries give their data's place as an
offset from the EXIF's TIFF header, not from the note: Pillow's ``Exif.tobytes`` puts the note elsewhere
(it moved 36 bytes when the orientation and size tags were added), so each such offset is moved by as much,
as ExifTool does. A note is moved only when every entry's data lies inside the note (then nothing it points
at is left behind); one that cannot be read so is left to the caller to drop."""
from __future__ import annotations

import struct

EXIF_IFD, MAKER_NOTE = 0x8769, 0x927C
# Headers before the IFD of notes whose offsets count from the EXIF's TIFF header (a headerless note, Canon's,
# starts with its IFD). Notes with a TIFF header of their own (Nikon's) or relative offsets need no moving.
_HEADERS = (b"SONY DSC \0\0\0", b"SONY CAM \0\0\0", b"SONY MOBILE\0", b"Panasonic\0\0\0")
_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}  # bytes per value, by type
_MAX_ENTRIES = 1000


def _tiff(data: bytes) -> tuple[bytes, int, str] | None:
    """(the TIFF structure, its start in ``data``, struct's byte order) of EXIF bytes, with or without
    the ``Exif\\0\\0`` that JPEG's APP1 and Pillow's tobytes put before it."""
    skip = 6 if data[:6] == b"Exif\0\0" else 0
    head = data[skip:skip + 4]
    order = "<" if head == b"II*\0" else ">" if head == b"MM\0*" else None
    return (data[skip:], skip, order) if order else None


def _entries(t: bytes, at: int, order: str):
    """(place of the entry, tag, type, count, its 4 value bytes' place) of the IFD at ``at``; stops at damage."""
    if at + 2 > len(t):
        return
    (n,) = struct.unpack_from(order + "H", t, at)
    for i in range(min(n, _MAX_ENTRIES)):
        e = at + 2 + 12 * i
        if e + 12 > len(t):
            return
        tag, typ, count = struct.unpack_from(order + "HHI", t, e)
        yield e, tag, typ, count, e + 8


def _find(t: bytes, at: int, order: str, tag: int):
    for e in _entries(t, at, order):
        if e[1] == tag:
            return e
    return None


def position(data: bytes) -> tuple[int, int] | None:
    """(offset from the TIFF header, length) of the MakerNote in EXIF bytes, or None where there is none."""
    found = _tiff(data)
    if not found:
        return None
    t, _, order = found
    if len(t) < 8:
        return None
    (ifd0,) = struct.unpack_from(order + "I", t, 4)
    ptr = _find(t, ifd0, order, EXIF_IFD)
    if ptr is None:
        return None
    (sub,) = struct.unpack_from(order + "I", t, ptr[4])
    note = _find(t, sub, order, MAKER_NOTE)
    if note is None or note[3] <= 4:
        return None
    (at,) = struct.unpack_from(order + "I", t, note[4])
    return (at, note[3]) if at + note[3] <= len(t) else None


def _out_of_line(t: bytes, start: int, length: int, order: str) -> list | None:
    """The places (in ``t``) of the note's entries' data offsets, when the note at ``start`` is an IFD whose
    data all lie inside it; None otherwise."""
    note = t[start:start + length]
    skip = next((len(h) for h in _HEADERS if note.startswith(h)), 0)
    if length < skip + 2:
        return None
    (n,) = struct.unpack_from(order + "H", note, skip)
    if not 0 < n <= _MAX_ENTRIES or skip + 2 + 12 * n > length:
        return None
    places = []
    for _, _, typ, count, value in _entries(t, start + skip, order):
        size = _SIZES.get(typ)
        if size is None:
            return None  # not an IFD after all
        if size * count > 4:
            (off,) = struct.unpack_from(order + "I", t, value)
            if not (start <= off and off + size * count <= start + length):
                return None  # data outside the note (a preview image): what it points at is not carried
            places.append(value)
    return places


def rebase(old: bytes, new: bytes) -> bytes | None:
    """``new`` (``old``'s EXIF laid out anew, the note's bytes unchanged) with the note's offsets moved to
    where the note now is; ``new`` itself where there is nothing to move; None where the note cannot be
    moved (its data not all inside it, or the byte order changed)."""
    was, now = position(old), position(new)
    if was is None or now is None:
        return new if now is None else None
    (t_old, _, o_old), (t_new, skip, order) = _tiff(old), _tiff(new)
    if o_old != order or t_old[was[0]:sum(was)] != t_new[now[0]:sum(now)]:
        return None
    places = _out_of_line(t_old, was[0], was[1], order)
    if places is None:
        return None
    delta = now[0] - was[0]
    out = bytearray(new)
    for p in places:
        (off,) = struct.unpack_from(order + "I", t_old, p)
        struct.pack_into(order + "I", out, skip + p - was[0] + now[0], off + delta)
    end = skip + now[0] + now[1]  # Canon's footer, as ExifTool writes it: "II*\0" and the note's own offset
    if now[1] >= 8 and out[end - 8:end - 4] in (b"II*\0", b"MM\0*") and \
            struct.unpack_from(order + "I", out, end - 4)[0] == was[0]:
        struct.pack_into(order + "I", out, end - 4, now[0])
    return bytes(out)
