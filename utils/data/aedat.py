"""Vectorised decoders for the two raw event formats of the DVS datasets (NumPy 2 safe).

Both decoders reproduce what SpikingJelly 0.0.0.0.14 stores for these datasets (docs/recipe.md section 5), without
its per-event Python loop (AEDAT 3.1) and without the NumPy-2-incompatible ``np.fromstring`` / ``np.bool``
(AEDAT 2.0 of CIFAR10-DVS):

- ``read_aedat31``: DVS128 Gesture. ASCII header up to ``#!END-HEADER``; packets of a 28-byte little-endian
  header (type, source, event size, timestamp offset, timestamp overflow, capacity, number, valid) followed
  by ``capacity`` events of ``event size`` bytes. Polarity packets (type 1): uint32 ``data`` then uint32
  timestamp; ``x = (data >> 17) & 0x7FFF``, ``y = (data >> 2) & 0x7FFF``, ``p = (data >> 1) & 1``,
  ``t = timestamp | overflow << 31``. All ``capacity`` events are kept (SpikingJelly ignores the valid bit),
  other packet types are skipped.
- ``read_aedat20_cifar10dvs``: CIFAR10-DVS (jAER AEDAT 2.0). Header lines start with ``#``; then big-endian
  uint32 (address, timestamp) pairs; DVS128 address bits ``x = (a >> 1) & 0x7F``, ``y = (a >> 8) & 0x7F``,
  ``p = a & 1``; stored as ``x' = 127 - y``, ``y' = 127 - x``, ``p' = 1 - p`` (the published convention).

Both return ``{'t': int64, 'x': int16, 'y': int16, 'p': int8}`` arrays. A truncated or corrupt file raises
``DecodeError`` whose message names the file; so does a file without its format's first header line
(``#!AER-DAT3.x`` / ``#!AER-DAT2.x``; by jAER's convention a file without one is AEDAT 1.0, whose 6-byte events
these decoders cannot read, or no recording at all).

``check_events`` refuses decoded events that cannot be a recording (none, or timestamps in no order); it is
``scripts/prepare_dvs.py``'s, not the decoders', so that the decoders stay comparable with SpikingJelly's readers.
"""
import struct

import numpy as np

__all__ = ['DecodeError', 'check_events', 'read_aedat31', 'read_aedat20_cifar10dvs', 'parse_aedat31',
           'parse_aedat20_cifar10dvs']

_PACKET_HEADER = struct.Struct('<HHIIIIII')  # type, source, size, ts offset, ts overflow, capacity, number, valid
POLARITY_EVENT = 1
END_HEADER = b'#!END-HEADER'


class DecodeError(ValueError):
    """A raw recording that cannot be decoded (truncated, corrupt, or not in the expected format)."""


def _read(path):
    with open(path, 'rb') as f:
        return f.read()


def _events(t, x, y, p):
    return {'t': np.asarray(t, dtype=np.int64), 'x': np.asarray(x, dtype=np.int16),
            'y': np.asarray(y, dtype=np.int16), 'p': np.asarray(p, dtype=np.int8)}


def _aedat31_header_end(buf, name):
    """Offset of the first packet: just after the ``#!END-HEADER`` line (header of any length)."""
    if not buf.startswith(b'#!AER-DAT3'):
        raise DecodeError(f'{name}: not an AEDAT 3.x recording (first bytes {buf[:12]!r})')
    pos = 0
    while pos < len(buf):
        nl = buf.find(b'\n', pos)
        end = len(buf) if nl < 0 else nl + 1
        line = buf[pos:end]
        if not line.startswith(b'#'):
            break
        pos = end
        if line.rstrip(b'\r\n') == END_HEADER:
            return pos
    raise DecodeError(f'{name}: AEDAT 3.1 header has no {END_HEADER.decode()} line (truncated or corrupt)')


def parse_aedat31(buf, name='<bytes>', sensor_size=None):
    """Decode AEDAT 3.1 bytes (see the module docstring). ``sensor_size=(W, H)`` rejects events outside it."""
    pos = _aedat31_header_end(buf, name)
    n = len(buf)
    chunks, overflows = [], []
    unpack = _PACKET_HEADER.unpack_from
    while pos < n:
        if n - pos < _PACKET_HEADER.size:
            raise DecodeError(f'{name}: truncated packet header at byte {pos} ({n - pos} of 28 bytes)')
        e_type, _source, size, _offset, overflow, capacity, _number, _valid = unpack(buf, pos)
        pos += _PACKET_HEADER.size
        length = capacity * size
        if pos + length > n:
            raise DecodeError(f'{name}: truncated packet at byte {pos - 28}: {capacity} events of {size} bytes '
                              f'announced, {n - pos} bytes left')
        if e_type == POLARITY_EVENT and capacity > 0:
            if size < 8:
                raise DecodeError(f'{name}: polarity packet at byte {pos - 28} has event size {size} (< 8)')
            raw = np.frombuffer(buf, dtype=np.uint8, count=length, offset=pos).reshape(capacity, size)
            chunks.append(raw[:, :8])
            overflows.append((overflow, capacity))
        pos += length
    if not chunks:
        return _events([], [], [], [])
    words = np.ascontiguousarray(np.concatenate(chunks)).view('<u4')  # [N, 2]: data, timestamp
    data = words[:, 0]
    ovf = np.repeat(np.array([o for o, _ in overflows], dtype=np.int64),
                    np.array([c for _, c in overflows], dtype=np.int64))
    t = words[:, 1].astype(np.int64) | (ovf << 31)
    x = (data >> 17) & 0x7FFF
    y = (data >> 2) & 0x7FFF
    p = (data >> 1) & 1
    if sensor_size is not None and data.size:
        w, h = sensor_size
        if int(x.max()) >= w or int(y.max()) >= h:
            raise DecodeError(f'{name}: events outside the {w}x{h} sensor (max x {int(x.max())}, max y '
                              f'{int(y.max())}); the recording is corrupt or not from this sensor')
    return _events(t, x, y, p)


def read_aedat31(path, sensor_size=None):
    """Decode an AEDAT 3.1 recording file (DVS128 Gesture)."""
    return parse_aedat31(_read(path), str(path), sensor_size)


def _aedat20_header_end(buf, name):
    """Header of jAER AEDAT 2.0: the ``#!AER-DAT2.x`` line, then consecutive lines starting with ``#`` (which
    SpikingJelly skips without looking at the first)."""
    if not buf.startswith(b'#!AER-DAT2.'):
        raise DecodeError(f'{name}: not an AEDAT 2.0 recording: it does not start with the #!AER-DAT2.0 header line '
                          f'(first bytes {buf[:12]!r})')
    pos = 0
    while pos < len(buf):
        nl = buf.find(b'\n', pos)
        end = len(buf) if nl < 0 else nl + 1
        try:
            text = buf[pos:end].decode().strip()
        except UnicodeDecodeError:
            break
        if not text or text[0] != '#':
            break
        pos = end
    return pos


def parse_aedat20_cifar10dvs(buf, name='<bytes>'):
    """Decode CIFAR10-DVS AEDAT 2.0 bytes with the published axis and polarity convention."""
    pos = _aedat20_header_end(buf, name)
    body = len(buf) - pos
    if body % 8:
        raise DecodeError(f'{name}: {body} bytes of events after the header, not a multiple of 8 '
                          f'(truncated or corrupt recording)')
    words = np.frombuffer(buf, dtype='>u4', offset=pos).reshape(-1, 2) if body else np.zeros((0, 2), '>u4')
    addr = words[:, 0]
    x = (addr >> 1) & 0x7F
    y = (addr >> 8) & 0x7F
    p = addr & 1
    return _events(words[:, 1], 127 - y.astype(np.int16), 127 - x.astype(np.int16), 1 - p.astype(np.int8))


def read_aedat20_cifar10dvs(path):
    """Decode a CIFAR10-DVS ``.aedat`` (AEDAT 2.0) recording file."""
    return parse_aedat20_cifar10dvs(_read(path), str(path))


MAX_BACKWARD_FRACTION = 0.01


def check_events(ev, name):
    """Refuse events that cannot be a recording: none at all, or timestamps that go back in time between more than
    ``MAX_BACKWARD_FRACTION`` (1 %) of consecutive events (random bytes do so about half the time). Real sensors
    deliver a few out-of-order events (USB transfers, a 32-bit timestamp wrap), which are kept as SpikingJelly keeps
    them; so the rule is not "sorted"."""
    t = ev['t']
    if t.size == 0:
        raise DecodeError(f'{name}: no events (an empty or cut recording)')
    backward = int(np.count_nonzero(np.diff(t) < 0))
    if backward > MAX_BACKWARD_FRACTION * (t.size - 1):
        raise DecodeError(f'{name}: timestamps go back in time between {backward} of {t.size - 1} consecutive events '
                          f'(more than {MAX_BACKWARD_FRACTION:.0%}): not a recording of this format, or corrupt')
