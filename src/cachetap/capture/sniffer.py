"""Live capture: raw frames from one interface through a kernel BPF filter, no dissection.

Built on scapy's Linux `L2ListenSocket` (PF_PACKET socket, filter compiled by libpcap and attached
in the kernel, VLAN tags put back from the kernel's auxiliary data, kernel timestamps). We read its
raw receive path and hand bytes to `linklayer.decode_frame`; scapy never dissects a packet here.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import struct
import threading
from collections.abc import Callable, Iterator

from scapy.arch.linux import L2ListenSocket, get_last_packet_timestamp
from scapy.error import Scapy_Exception
from scapy.layers import l2 as _l2  # noqa: F401  registers ARPHRD types, or scapy warns on loopback

log = logging.getLogger(__name__)

Frame = tuple[float, int, bytes]

# ARPHRD_* hardware types (linux/if_arp.h) -> pcap link type of the frames the socket returns.
ARPHRD_TO_LINKTYPE = {
    1: 1,        # ARPHRD_ETHER
    772: 1,      # ARPHRD_LOOPBACK: Linux loopback carries Ethernet headers with zero MACs
    512: 101,    # ARPHRD_PPP: raw IP
    519: 101,    # ARPHRD_RAWIP
    65534: 101,  # ARPHRD_NONE (tun): raw IP
}
ARPHRD_LOOPBACK = 772
SOL_PACKET = 263
PACKET_STATISTICS = 6
RECEIVE_BUFFER = 8 << 20  # absorbs bursts while the pipeline is busy; only request starts get here
POLL_SECONDS = 1.0        # wake-up interval even without traffic or stop() (belt and braces)
PACKET_AUXDATA = 8
SO_TIMESTAMPNS = 35
TP_STATUS_VLAN_VALID = 1 << 4
TP_STATUS_VLAN_TPID_VALID = 1 << 6
ETH_P_8021Q = 0x8100
_AUXDATA = struct.Struct("=IIIHHHH")  # struct tpacket_auxdata (linux/if_packet.h)
_TIMESPEC = struct.Struct("=qq")      # struct timespec on 64-bit Linux
_TIMESPEC32 = struct.Struct("=ii")    # and on 32-bit
_ANCILLARY_SPACE = socket.CMSG_SPACE(_AUXDATA.size) + socket.CMSG_SPACE(_TIMESPEC.size)


class CaptureOpenError(Exception):
    """The interface could not be opened for capture; the message names it and the cause."""


def interface_linktype(interface: str) -> int:
    """The pcap link type of frames captured on `interface` (to build a filter that compiles there)."""
    hatype = _hardware_type(interface)
    if hatype not in ARPHRD_TO_LINKTYPE:
        raise CaptureOpenError(f"cannot capture on {interface}: unsupported hardware type {hatype}")
    return ARPHRD_TO_LINKTYPE[hatype]


def _hardware_type(interface: str) -> int:
    try:
        socket.if_nametoindex(interface)
    except OSError:
        raise CaptureOpenError(f"cannot capture on {interface}: no such network interface") from None
    try:
        with open(f"/sys/class/net/{interface}/type") as fh:
            return int(fh.read().strip())
    except (OSError, ValueError) as exc:
        raise CaptureOpenError(f"cannot capture on {interface}: hardware type unknown ({exc})") from None


class LiveSource:
    """Iterate (ts, linktype, frame) from `interface`, filtered in the kernel by `bpf`.

    Use as a context manager; `stop()` (from any thread or a signal handler) ends the iteration
    promptly. `promisc` puts the interface in promiscuous mode while open, which a mirror port
    needs to see frames addressed to other hosts. `on_idle` is called each time the frames queued
    in the kernel have all been yielded, before waiting for more (the loop flushes work it batched).
    """

    def __init__(self, interface: str, bpf: str | None, snaplen: int = 65535, promisc: bool = True,
                 on_idle: Callable[[], None] | None = None) -> None:
        self.interface = interface
        self.on_idle = on_idle
        self.bpf = bpf
        self.snaplen = snaplen
        self.promisc = promisc
        self.linktype: int | None = None
        self.received = 0
        self.kernel_drops = 0
        self.errors = 0
        self._sock: L2ListenSocket | None = None
        self._skip_outgoing = False
        self._stopped = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)

    # ---- lifecycle ---------------------------------------------------------------------------
    def open(self) -> None:
        if self._sock is not None:
            return
        hatype = _hardware_type(self.interface)
        self.linktype = interface_linktype(self.interface)
        try:
            sock = L2ListenSocket(iface=self.interface, filter=self.bpf, promisc=self.promisc)
        except PermissionError:
            raise CaptureOpenError(f"cannot capture on {self.interface}: permission denied "
                                   "(needs root or CAP_NET_RAW)") from None
        except OSError as exc:
            if exc.errno in (errno.ENODEV, errno.ENXIO):
                raise CaptureOpenError(f"cannot capture on {self.interface}: no such network interface") from None
            raise CaptureOpenError(f"cannot capture on {self.interface}: {exc.strerror or exc}") from None
        except (Scapy_Exception, ImportError) as exc:
            raise CaptureOpenError(f"cannot capture on {self.interface}: filter {self.bpf!r} rejected: {exc}") from None
        self._skip_outgoing = hatype == ARPHRD_LOOPBACK
        try:
            sock.ins.setsockopt(socket.SOL_SOCKET, 33, RECEIVE_BUFFER)  # SO_RCVBUFFORCE (root)
        except OSError:
            sock.ins.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        sock.ins.setblocking(False)
        self._sock = sock

    def stop(self) -> None:
        """End the iteration soon; safe from other threads and signal handlers."""
        self._stopped.set()
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass  # pipe full or closed: the flag and the poll timeout still end the loop

    def close(self) -> None:
        self._stopped.set()
        if self._sock is not None:
            self._collect_kernel_drops()
            self._sock.close()
            self._sock = None
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r = self._wake_w = -1

    def __enter__(self) -> LiveSource:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def stats(self) -> dict[str, int]:
        self._collect_kernel_drops()
        return {"received": self.received, "kernel_drops": self.kernel_drops, "errors": self.errors}

    # ---- frames ------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Frame]:
        self.open()
        sock = self._sock
        assert sock is not None and self.linktype is not None
        fd, wake, linktype = sock.ins.fileno(), self._wake_r, self.linktype
        recv = _receiver(sock)
        outgoing = socket.PACKET_OUTGOING
        while not self._stopped.is_set():
            try:
                ready, _, _ = select.select([fd, wake], [], [], POLL_SECONDS)
            except (OSError, ValueError):
                return  # closed from another thread
            if fd not in ready:
                continue
            # Drain everything queued before polling again: one select per burst, not per frame.
            while not self._stopped.is_set():
                try:
                    frame, address, ts = recv(self.snaplen)
                except BlockingIOError:
                    self._idle()
                    break
                except OSError as exc:
                    if exc.errno == errno.EBADF:
                        return
                    # e.g. ENETDOWN while the link flaps: count it and keep listening
                    self.errors += 1
                    log.warning("capture on %s: receive failed: %s", self.interface, exc)
                    break
                if not frame:
                    continue
                if self._skip_outgoing and address[2] == outgoing:
                    continue  # loopback shows each frame twice, as sent and as received
                if ts is None:
                    ts = get_last_packet_timestamp(sock.ins)
                self.received += 1
                yield ts, linktype, frame

    def _idle(self) -> None:
        if self.on_idle is None:
            return
        try:
            self.on_idle()
        except Exception:  # the capture goes on whatever the hook does
            self.errors += 1
            log.exception("capture on %s: idle hook failed", self.interface)

    def _collect_kernel_drops(self) -> None:
        # Reading PACKET_STATISTICS resets the kernel's counters, so accumulate.
        if self._sock is None:
            return
        try:
            raw = self._sock.ins.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
        except OSError:
            return
        _packets, drops = struct.unpack("II", raw)
        self.kernel_drops += drops


def _receiver(sock: L2ListenSocket) -> Callable[[int], tuple[bytes, tuple, float | None]]:
    """recv(snaplen) -> (frame, sockaddr_ll, kernel timestamp or None), VLAN tag put back.

    What scapy's `_recv_raw` does, hand-written for the hot path: scapy asks for 4 KiB of ancillary
    data and decodes the auxdata with ctypes, several microseconds per frame; here the buffer fits
    the two messages the socket was asked for (PACKET_AUXDATA, SO_TIMESTAMPNS) and `struct` reads them.
    """
    ins = sock.ins
    if not sock.auxdata_available:  # a kernel without auxdata: no tags to restore, no timestamps
        def recv_plain(snaplen: int) -> tuple[bytes, tuple, float | None]:
            frame, _, _, address = ins.recvmsg(snaplen)
            return frame, address, None
        return recv_plain

    recvmsg, auxdata, aux_size = ins.recvmsg, _AUXDATA.unpack_from, _AUXDATA.size

    def recv(snaplen: int) -> tuple[bytes, tuple, float | None]:
        frame, ancillary, _, address = recvmsg(snaplen, _ANCILLARY_SPACE)
        ts = None
        for level, kind, data in ancillary:
            if level == SOL_PACKET and kind == PACKET_AUXDATA:
                if len(data) < aux_size:
                    continue
                status, _, _, _, _, tci, tpid = auxdata(data)
                if tci or status & TP_STATUS_VLAN_VALID:  # the kernel took the tag off: put it back
                    tag = struct.pack("!HH", tpid if status & TP_STATUS_VLAN_TPID_VALID else ETH_P_8021Q, tci)
                    frame = frame[:12] + tag + frame[12:]
            elif level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                if len(data) == _TIMESPEC.size:
                    seconds, nanoseconds = _TIMESPEC.unpack(data)
                elif len(data) == _TIMESPEC32.size:
                    seconds, nanoseconds = _TIMESPEC32.unpack(data)
                else:
                    continue  # unknown layout: the iterator falls back to SIOCGSTAMP
                ts = seconds + nanoseconds * 1e-9
        return frame, address, ts

    return recv
