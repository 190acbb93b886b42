"""jAER / cAER event files (AEDAT 2.0 and 3.1), decoded with numpy.

Both begin with ASCII header lines that start with ``#``; the first names the version
(``#!AER-DAT2.0``, ``#!AER-DAT3.1``) and a 3.1 header ends with ``#!END-HEADER``.

- **AEDAT 2.0** (jAER; CIFAR10-DVS): then 8 bytes per event, big-endian: uint32 address, uint32
  timestamp in microseconds. What the address holds depends on the camera (``_dvs.py`` decodes
  CIFAR10-DVS's DVS128 addresses).
- **AEDAT 3.1** (cAER; DVS128 Gesture): then packets, each a 28-byte little-endian header (int16
  event type, int16 source, int32 event size, int32 timestamp offset, int32 timestamp overflow,
  int32 capacity, int32 number, int32 valid) and ``capacity × size`` bytes of events. Polarity
  events (type 1, 8 bytes): uint32 data (bit 0 validity mark, bit 1 polarity, bits 2-16 y,
  bits 17-31 x), int32 timestamp; the full timestamp is ``overflow << 31 | timestamp``
  (inivation's AEDAT 3.1 specification; SpikingJelly's ``load_aedat_v3`` and tonic's
  ``read_dvs_ibm`` decode the same way). Packets of other types are skipped. Like both
  references, every polarity event is kept whatever its validity mark.
"""

from __future__ import annotations

import struct
from typing import Optional

import numpy as np

_PACKET = struct.Struct("<hhiiiiii")
POLARITY_EVENT = 1


def read_header(data: bytes, source: str) -> tuple[Optional[str], int]:
    """``(version, offset)``: the version the header names (``"2.0"``, ``"3.1"``; None when no
    ``#!AER-DAT`` line) and where the binary data start.

    Header lines are the lines at the start of the file that begin with ``#``; ``#!END-HEADER``
    ends the header (3.1), and otherwise the first line that does not begin with ``#``.
    """
    offset, version = 0, None
    while data[offset:offset + 1] == b"#":
        end = data.find(b"\n", offset)
        if end < 0:
            raise ValueError(f"event file {source} is truncated: its header (lines starting with '#') never ends")
        line = data[offset:end].rstrip(b"\r")
        offset = end + 1
        if line.startswith(b"#!AER-DAT") and version is None:
            version = line[len(b"#!AER-DAT"):].decode("ascii", "replace").strip()
        if line == b"#!END-HEADER":
            break
    return version, offset


def decode_aedat2(data: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    """``(address, timestamp)`` uint32 arrays of an AEDAT 2.0 file's events.

    Raises:
        ValueError: the header names another version, or the data are not whole 8-byte events.
    """
    version, offset = read_header(data, source)
    if version is not None and not version.startswith("2."):
        raise ValueError(f"event file {source} is AEDAT {version}, expected AEDAT 2.0 ('#!AER-DAT2.0' header)")
    body = len(data) - offset
    if body % 8:
        raise ValueError(f"event file {source} has {body} bytes of events after its header, not a whole number "
                         "of 8-byte AEDAT 2.0 events (truncated?)")
    events = np.frombuffer(data, dtype=">u4", offset=offset).reshape(-1, 2)
    return events[:, 0].astype(np.uint32), events[:, 1].astype(np.uint32)


def decode_aedat31_polarity(data: bytes, source: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(t, x, y, p)`` int64 arrays of the polarity events of an AEDAT 3.1 file, in file order.

    Raises:
        ValueError: the header does not name AEDAT 3.x, a packet is truncated, or a polarity
            packet's events are not 8 bytes.
    """
    version, offset = read_header(data, source)
    if version is None or not version.startswith("3."):
        raise ValueError(f"event file {source} is {'AEDAT ' + version if version else 'not an AEDAT file'}, "
                         "expected AEDAT 3.1 ('#!AER-DAT3.1' header, as the DvsGesture files have)")
    parts, overflows = [], []
    size = len(data)
    while offset < size:
        if size - offset < _PACKET.size:
            raise ValueError(f"event file {source} is truncated: {size - offset} bytes left, shorter than a "
                             "28-byte packet header")
        kind, _, event_size, _, overflow, capacity, _, _ = _PACKET.unpack_from(data, offset)
        offset += _PACKET.size
        length = capacity * event_size
        if capacity < 0 or event_size < 0 or offset + length > size:
            raise ValueError(f"event file {source} is truncated: a packet of {capacity} events of {event_size} "
                             f"bytes runs past the end of the file")
        if kind == POLARITY_EVENT:
            if event_size != 8:
                raise ValueError(f"event file {source} has polarity events of {event_size} bytes, expected 8")
            parts.append(np.frombuffer(data, dtype="<u4", count=2 * capacity, offset=offset))
            overflows.append(np.full(capacity, overflow, dtype=np.int64))
        offset += length
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, empty
    events = np.concatenate(parts).reshape(-1, 2)
    address = events[:, 0].astype(np.int64)
    t = (np.concatenate(overflows) << 31) | events[:, 1].astype(np.int64)
    return t, (address >> 17) & 0x7FFF, (address >> 2) & 0x7FFF, (address >> 1) & 1
