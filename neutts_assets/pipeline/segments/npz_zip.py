"""Standard `.npz` files (a zip of `.npy` members, what `numpy.load` opens), written and read
member by member, with their compressed bytes in hand.

Why not `np.savez_compressed` and `np.load`:
- zlib at its fastest level deflates a segment's float32 waveform at ~800x realtime per core;
  ISA-L's deflate (`isal`) writes the same standard deflate stream at ~6,000x, at the same size
  (bench/stage1.py). zipfile cannot be handed another deflater, so the zip is written here.
- Stage 2's file is the stage-1 file plus codes. Copying every other member's compressed bytes
  as they are (`raw_members` → `write_npz`) means the audio is never inflated or deflated again.
- Inflating with ISA-L is ~2.5x faster than zlib, which stage 2 pays for every segment.

What is written is a plain zip (no zip64, no data descriptors, the 1980 timestamp numpy's own
writer leaves, so the same members give the same bytes); zipfile, numpy and any unzip read it.
Every member read here is checked against its CRC-32, as zipfile does.
"""

from __future__ import annotations

import io
import struct
import zipfile
from dataclasses import dataclass

import numpy as np
from isal import isal_zlib

STORED, DEFLATED = zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED
DEFLATE_LEVEL = 1  # ISA-L's levels are 0-3; 1 is its fastest that still finds the float32's redundancy
_LOCAL = struct.Struct("<4s5H3L2H")  # local file header, without name and extra field
_CENTRAL = struct.Struct("<4s6H3L5H2L")  # central directory entry, without name, extra and comment
_END = struct.Struct("<4s4H2LH")  # end of central directory record
_DOS_DATE_1980 = (1 << 5) | 1  # 1980-01-01, the earliest a zip can say


@dataclass(frozen=True)
class Member:
    """One member as it lies in the zip: its name, method, CRC-32, sizes and compressed bytes."""

    name: str
    method: int
    crc: int
    size: int  # uncompressed
    payload: bytes  # as stored (deflated or not)


def npy_bytes(value) -> bytes:
    """`value` as a `.npy` file (numpy's header, then the data); never pickled."""
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asanyarray(value), allow_pickle=False)
    return buf.getvalue()


def stored(name: str, data: bytes) -> Member:
    return Member(name, STORED, isal_zlib.crc32(data), len(data), bytes(data))


def deflated(name: str, data: bytes, level: int = DEFLATE_LEVEL) -> Member:
    packer = isal_zlib.compressobj(level, isal_zlib.DEFLATED, -15)  # raw deflate, as zip wants it
    payload = packer.compress(data) + packer.flush()
    return Member(name, DEFLATED, isal_zlib.crc32(data), len(data), payload)


def write_npz(members: list[Member]) -> bytes:
    """The zip holding `members` in this order."""
    out, central, offset = [], [], 0
    for m in members:
        name = m.name.encode("ascii")  # numpy's member names ("audio.npy"); nothing else is written
        if m.size >= 0xFFFFFFFF or len(m.payload) >= 0xFFFFFFFF:
            raise ValueError(f"{m.name}: over 4 GiB, which a zip without zip64 cannot hold")
        fields = (20, 0, m.method, 0, _DOS_DATE_1980, m.crc, len(m.payload), m.size, len(name))
        out += [_LOCAL.pack(b"PK\x03\x04", *fields, 0), name, m.payload]
        central += [_CENTRAL.pack(b"PK\x01\x02", 20, *fields, 0, 0, 0, 0, 0o600 << 16, offset), name]
        offset += _LOCAL.size + len(name) + len(m.payload)
    directory = b"".join(central)
    end = _END.pack(b"PK\x05\x06", 0, 0, len(members), len(members), len(directory), offset, 0)
    return b"".join(out) + directory + end


def raw_members(data: bytes) -> dict[str, Member]:
    """Every member of the zip `data`, by member name, with its bytes still compressed (any zip
    numpy or this module wrote: stored or deflated, zip64 or not)."""
    result = {}
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for info in zf.infolist():
            if info.compress_type not in (STORED, DEFLATED) or info.flag_bits & 0x1:
                raise ValueError(
                    f"member {info.filename!r}: compression {info.compress_type} or encryption is not read here"
                )
            header = _LOCAL.unpack_from(data, info.header_offset)
            if header[0] != b"PK\x03\x04":
                raise ValueError(f"member {info.filename!r}: bad local header")
            start = info.header_offset + _LOCAL.size + header[9] + header[10]
            payload = data[start : start + info.compress_size]
            if len(payload) != info.compress_size:
                raise ValueError(f"member {info.filename!r} is truncated")
            result[info.filename] = Member(info.filename, info.compress_type, info.CRC, info.file_size, payload)
    return result


def member_bytes(member: Member) -> bytes:
    """The member's uncompressed bytes, checked against its size and CRC-32."""
    data = isal_zlib.decompress(member.payload, -15) if member.method == DEFLATED else member.payload
    if len(data) != member.size or isal_zlib.crc32(data) != member.crc:
        raise ValueError(f"member {member.name!r} is corrupt (size or CRC-32 does not match)")
    return data


def read_npy(member: Member) -> np.ndarray:
    """The array a `.npy` member holds (read only; never unpickled)."""
    return np.lib.format.read_array(io.BytesIO(member_bytes(member)), allow_pickle=False)
