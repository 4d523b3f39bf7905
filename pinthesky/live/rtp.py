"""H.264 over RTP (RFC 6184) and the session description RTSP clients ask for.

The ring already holds the encoder's Annex-B access units; this module only cuts them into
RTP packets (single NAL unit packets, FU-A fragments for NAL units larger than the payload
size), builds the SDP of the stream from the parameter sets of a keyframe, and writes the
RTCP sender reports that let a client map RTP time to wall-clock time. Nothing is decoded or
encoded again.
"""

from __future__ import annotations

import base64
import struct
import time
from typing import Any

from pinthesky.media import nal_type, split_annexb

PAYLOAD_TYPE = 96
CLOCK_RATE = 90_000
MAX_PAYLOAD = 1400
"""Bytes of RTP payload: a 1500-byte Ethernet frame less IPv6, UDP and RTP headers."""
NTP_EPOCH_OFFSET = 2_208_988_800
"""Seconds from 1900 (NTP) to 1970 (Unix)."""
_AUD = 9  # access unit delimiter: carries nothing a client needs
_RTP_HEADER = struct.Struct(">BBHII")
_INTERLEAVED = struct.Struct(">BBH")  # b"$", channel, length


def parameter_sets(data: bytes) -> tuple[bytes, bytes] | None:
    """The SPS and PPS NAL units of an access unit (a keyframe with repeated headers)."""
    sps = pps = None
    for unit in split_annexb(data[:4096]):
        kind = nal_type(unit)
        if kind == 7 and sps is None:
            sps = unit
        elif kind == 8 and pps is None:
            pps = unit
    if sps is None or pps is None or len(sps) < 4:
        return None
    return sps, pps


def nal_units(access_unit: bytes) -> list[bytes]:
    """The NAL units an access unit is sent as (split once, shared by every client)."""
    return [u for u in split_annexb(access_unit) if u and nal_type(u) != _AUD]


def sdp(sps: bytes, pps: bytes, origin_ip: str, session_id: int, framerate: float) -> str:
    """The session description of the one video track (RFC 4566, RFC 6184 section 8)."""
    # profile_idc, constraint flags and level_idc are the three bytes after the NAL header.
    profile = sps[1:4].hex().upper()
    sprop = ",".join(base64.b64encode(u).decode("ascii") for u in (sps, pps))
    family = "IP6" if ":" in origin_ip else "IP4"
    lines = [
        "v=0",
        f"o=- {session_id} 1 IN {family} {origin_ip}",
        "s=pinthesky",
        f"c=IN {family} {'::' if family == 'IP6' else '0.0.0.0'}",
        "t=0 0",
        "a=control:*",
        "a=range:npt=now-",
        f"m=video 0 RTP/AVP {PAYLOAD_TYPE}",
        f"a=rtpmap:{PAYLOAD_TYPE} H264/{CLOCK_RATE}",
        f"a=fmtp:{PAYLOAD_TYPE} packetization-mode=1;profile-level-id={profile};"
        f"sprop-parameter-sets={sprop}",
        f"a=framerate:{framerate:g}",
        "a=control:trackID=0",
    ]
    return "\r\n".join(lines) + "\r\n"


class RtpStream:
    """The RTP state of one client's stream: SSRC, sequence number, timestamp offset, counts."""

    def __init__(self, ssrc: int, first_seq: int, ts_offset: int) -> None:
        self.ssrc = ssrc
        self.seq = first_seq & 0xFFFF
        self.ts_offset = ts_offset
        self.packets = 0
        self.octets = 0
        self.last_rtp_ts: int | None = None
        self.last_sensor_us: int | None = None

    def rtp_time(self, sensor_us: int) -> int:
        return (sensor_us * 9 // 100 + self.ts_offset) & 0xFFFFFFFF

    def packetize(
        self, units: list[bytes], sensor_us: int, channel: int | None = None
    ) -> list[bytes]:
        """RTP packets of one access unit (its ``nal_units``), the marker bit on the last.

        With ``channel`` (RTP over the RTSP connection) the result is one buffer holding every
        packet behind its ``$``-channel-length prefix (RFC 2326 10.12), built with one copy of
        the payload: the per-packet Python work is what a client costs the daemon.
        """
        ts = self.rtp_time(sensor_us)
        self.last_rtp_ts, self.last_sensor_us = ts, sensor_us
        pack, ssrc, seq = _RTP_HEADER.pack, self.ssrc, self.seq
        pieces: list[Any] = []
        packets: list[bytes] = []
        octets = 0
        step = MAX_PAYLOAD - 2
        for i, unit in enumerate(units):
            last_unit = i == len(units) - 1
            size = len(unit)
            if size <= MAX_PAYLOAD:
                frags: list[tuple[bytes, Any, bool]] = [(b"", unit, last_unit)]
            else:
                # FU-A: the NAL header's F and NRI bits go into the indicator, its type into
                # the FU header, with start and end bits on the first and last fragment.
                indicator, kind = (unit[0] & 0xE0) | 28, unit[0] & 0x1F
                body = memoryview(unit)
                frags = []
                for begin in range(1, size, step):
                    first, end = begin == 1, begin + step >= size
                    fu = (0x80 if first else 0) | (0x40 if end else 0) | kind
                    frags.append(
                        (bytes((indicator, fu)), body[begin : begin + step], last_unit and end)
                    )
            for prefix, payload, marker in frags:
                length = len(prefix) + len(payload)
                head = pack(0x80, (0x80 if marker else 0) | PAYLOAD_TYPE, seq, ts, ssrc)
                seq = (seq + 1) & 0xFFFF
                octets += length
                if channel is None:
                    packets.append(b"".join((head, prefix, payload)))
                else:
                    pieces += (_INTERLEAVED.pack(36, channel, 12 + length), head, prefix, payload)
        self.packets += len(packets) if channel is None else len(pieces) // 4
        self.octets += octets
        self.seq = seq
        return packets if channel is None else [b"".join(pieces)]

    def sender_report(self, now_sensor_us: int) -> bytes | None:
        """An RTCP SR (RFC 3550 6.4.1) tying the RTP clock to wall-clock time, or None before
        the first packet."""
        if self.last_rtp_ts is None or self.last_sensor_us is None:
            return None
        rtp_now = (self.last_rtp_ts + (now_sensor_us - self.last_sensor_us) * 9 // 100) & (
            0xFFFFFFFF
        )
        wall = time.time() + NTP_EPOCH_OFFSET
        seconds = int(wall)
        fraction = int((wall - seconds) * (1 << 32)) & 0xFFFFFFFF
        return struct.pack(
            ">BBHIIIIII",
            0x80,
            200,
            6,
            self.ssrc,
            seconds & 0xFFFFFFFF,
            fraction,
            rtp_now,
            self.packets & 0xFFFFFFFF,
            self.octets & 0xFFFFFFFF,
        )
