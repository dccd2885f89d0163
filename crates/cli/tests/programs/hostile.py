"""A hostile program for lego's confinement tests: run inside vNode a, it
tries what a tenant should not be able to do, and prints one line per
attempt: "<name>: ok <detail>" when the attempt worked (a hole), or
"<name>: refused <why>" when it was stopped. The test reads the lines.

It speaks lego's wire protocol itself (24-byte frames, the HMAC handshake
with its vNode's key, JSON control bodies, binary page batches) and the
processor monitor's broker protocol (SOCK_SEQPACKET with SCM_RIGHTS).

Usage: hostile.py ATTACK [ARGS...]; see the functions below.
"""

import errno
import hashlib
import hmac
import json
import os
import socket
import struct
import sys

OPS = {
    "challenge": 0x0001,
    "hello": 0x0002,
    "welcome": 0x0003,
    "ping": 0x0010,
    "read_pages": 0x0100,
    "write_pages": 0x0101,
    "assign_vregion": 0x0202,
    "create_space": 0x0203,
    "release_space": 0x0204,
    "release_owner": 0x0206,
    "report_unreachable": 0x0209,
    "cluster_state": 0x0220,
    "vnode_delete": 0x0212,
}
CODES = {
    1: "BadFrame",
    2: "AuthFailed",
    3: "BadRequest",
    4: "UnknownOp",
    5: "NotEntitled",
    6: "OutOfMemory",
    7: "NotFound",
    8: "Conflict",
    9: "Unavailable",
    10: "TooLarge",
}


def say(name, worked, detail):
    print(f"{name}: {'ok' if worked else 'refused'} {detail}", flush=True)


def os_error(name, f):
    """Runs f; an OSError is a refusal named by its errno."""
    try:
        r = f()
    except OSError as e:
        say(name, False, errno.errorcode.get(e.errno, str(e.errno)))
        return None
    say(name, True, repr(r)[:80])
    return r


# --- the broker ---------------------------------------------------------


def broker():
    return socket.socket(
        socket.AF_UNIX, socket.SOCK_SEQPACKET, fileno=int(os.environ["LEGO_RT_BROKER"])
    )


def broker_dial(addr):
    """A connection the processor monitor makes for us, or why not."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    b = broker()
    b.sendmsg([b"C" + addr.encode()], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", theirs.fileno()))])
    b.detach()
    theirs.close()
    mine.settimeout(5)
    msg, anc, _, _ = mine.recvmsg(512, socket.CMSG_SPACE(4))
    if msg[:1] == b"+" and anc:
        fd = struct.unpack("i", anc[0][2][:4])[0]
        return socket.socket(fileno=fd), None
    return None, msg[1:].decode(errors="replace")


# --- lego's wire protocol -------------------------------------------------


class Conn:
    def __init__(self, sock):
        self.s = sock
        self.s.settimeout(10)
        self.next = 1
        vid = int(os.environ["LEGO_RT_VNODE_ID"])
        key = bytes.fromhex(os.environ["LEGO_RT_KEY"])
        self.vid = vid
        op, flags, body = self.read()
        assert op == OPS["challenge"], op
        claim = bytes([2, 0, 0, 0]) + struct.pack("<I", vid)
        nonce = os.urandom(32)
        # The challenge: the server's nonce, then a flag byte (bit 0: sealed
        # links required), then the server's member id (0: it holds the
        # cluster secret). This client speaks plaintext: seal byte 0.
        server_nonce, plain = body[:32], b"\x00"
        proof = hmac.new(
            key, b"hello" + server_nonce + nonce + claim + plain, hashlib.sha256
        ).digest()
        self.write(OPS["hello"], 0, claim + nonce + proof + plain)
        op, flags, reply = self.read()
        if flags & 2:
            raise RuntimeError(f"handshake refused: {reply[2:].decode(errors='replace')}")

    def write(self, op, req_id, body):
        head = b"LG" + bytes([2, 0]) + struct.pack("<HHQII", op, 0, req_id, len(body), 0)
        self.s.sendall(head + body)

    def read_exact(self, n):
        out = b""
        while len(out) < n:
            chunk = self.s.recv(n - len(out))
            if not chunk:
                raise ConnectionError("closed")
            out += chunk
        return out

    def read(self):
        head = self.read_exact(24)
        flags = head[3]
        op, _, _, length, _ = struct.unpack("<HHQII", head[4:24])
        return op, flags, self.read_exact(length)

    def call(self, op, body):
        """(True, body) or (False, 'Code: message')."""
        self.next += 1
        self.write(OPS[op], self.next, body)
        _, flags, reply = self.read()
        if flags & 2:
            code = struct.unpack("<H", reply[:2])[0]
            return False, f"{CODES.get(code, code)}: {reply[2:].decode(errors='replace')}"
        return True, reply

    def json(self, op, req):
        ok, reply = self.call(op, json.dumps(req).encode())
        return ok, (json.loads(reply) if ok and reply else reply)


def connect(addr):
    sock, why = broker_dial(addr)
    if sock is None:
        raise RuntimeError(why)
    return Conn(sock)


def write_pages(conn, asid, first, count, version=1):
    head = struct.pack("<QIIQQ", asid, count, 0, version, 0)
    head += b"".join(struct.pack("<Q", first + i) for i in range(count))
    return conn.call("write_pages", head + b"\xab" * (4096 * count))


# --- the attacks ----------------------------------------------------------


def files(cluster_dir, b_vid):
    """The cluster's secret and directories, vNode b's files."""
    os_error("read the secret", lambda: open(os.path.join(cluster_dir, "secret")).read())
    os_error("list the cluster", lambda: os.listdir(cluster_dir))
    os_error(
        "read b's files",
        lambda: os.listdir(os.path.join(cluster_dir, "storage", "vnodes", str(b_vid))),
    )
    os_error("open a disk", lambda: open("/dev/sda", "rb").read(1))
    os_error("open /dev/mem", lambda: open("/dev/mem", "rb").read(1))
    os_error("open /dev/userfaultfd", lambda: open("/dev/userfaultfd", "rb"))


def procs(b_pid):
    """Processes outside the job, namespaces, mounts, the host's root."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def sys_call(name, r):
        e = ctypes.get_errno()
        say(name, r == 0, "" if r == 0 else errno.errorcode.get(e, str(e)))

    mine = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    print(f"pids: {len(mine)} max {max(mine)}", flush=True)
    os_error("read b's environment", lambda: open(f"/proc/{b_pid}/environ", "rb").read())
    os_error("signal b", lambda: os.kill(int(b_pid), 9))
    try:
        fd = os.open("/proc/1/ns/net", os.O_RDONLY)
        sys_call("enter init's network namespace", libc.setns(fd, 0))
    except OSError as e:
        say("enter init's network namespace", False, errno.errorcode.get(e.errno))
    sys_call("mount", libc.mount(b"x", b"/tmp", b"tmpfs", 0, None))
    os_error("read /etc/shadow", lambda: open("/etc/shadow").read())
    sys_call("unshare a user namespace", libc.unshare(0x10000000))
    os_error("read /etc/shadow from it", lambda: open("/etc/shadow").read())


def network(manager, http):
    """The cluster's ports, straight from the vNode's network."""
    for name, addr in (("reach the manager", manager), ("reach the manager's http", http)):
        host, port = addr.rsplit(":", 1)
        os_error(name, lambda: socket.create_connection((host, int(port)), timeout=2).close())


def dial(*addrs):
    """The broker connects only to the manager and memory monitors."""
    for addr in addrs:
        sock, why = broker_dial(addr)
        say(f"broker to {addr}", sock is not None, why or "connected")


def space_claim(b_asid):
    """A process of the job says b's space is its own, and is gone: the
    processor monitor frees a gone process's space (if it is the job's)."""
    import time

    pid = os.fork()
    if pid == 0:
        b = broker()
        b.send(b"S" + struct.pack("<Q", int(b_asid)))
        b.detach()
        os._exit(0)
    os.waitpid(pid, 0)
    time.sleep(1.5)
    print("claimed b's space", flush=True)


def manager_calls(manager, b_job, b_vid, b_asid):
    c = connect(manager)
    vid = c.vid
    ok, r = c.json("create_space", {"vnode": os.environ["LEGO_RT_VNODE"], "owner": int(b_job), "proof": "00" * 32})
    say("own a space as b's job", ok, r)
    ok, r = c.json("create_space", {"vnode": os.environ["LEGO_RT_VNODE"], "owner": int(b_job)})
    say("own a space as b's job without proof", ok, r)
    ok, r = c.json("assign_vregion", {"asid": (vid << 32) | 999999, "index": 0})
    say("place a vregion of a space never created", ok, r)
    ok, r = c.json("assign_vregion", {"asid": int(b_asid), "index": 0})
    say("place a vregion of b's space", ok, r)
    ok, r = c.json("release_space", {"asid": int(b_asid)})
    say("release b's space", ok, r)
    ok, r = c.json("release_owner", {"owner": int(b_job)})
    say("release b's job", ok, r)
    ok, r = c.json("vnode_delete", {"name": "b", "force": True})
    say("delete vnode b", ok, r)
    ok, r = c.json("cluster_state", None)
    say("read the cluster state", ok, r if not ok else "state")
    for _ in range(200):
        ok, r = c.json("report_unreachable", {"id": 1, "why": "x" * 10000})
    say("flood unreachable reports", ok, r)
    ok, _ = c.json("create_space", {"vnode": os.environ["LEGO_RT_VNODE"]})
    n = 1
    while ok and n < 6000:
        ok, r = c.json("create_space", {"vnode": os.environ["LEGO_RT_VNODE"]})
        n += 1
    say(f"create spaces without end ({n})", ok, r)


def memory(manager, monitors, b_asid):
    """Pages where nothing was placed, b's pages, and more than the quota."""
    c = connect(manager)
    vid = c.vid
    for addr in monitors.split(","):
        m = connect(addr)
        ok, r = write_pages(m, (vid << 32) | 999999, 0, 16)
        say(f"write a space never created on {addr}", ok, r)
        ok, r = write_pages(m, int(b_asid), 0, 1)
        say(f"write b's space on {addr}", ok, r)
        ok, r = m.call("read_pages", struct.pack("<QIIQ", int(b_asid), 1, 0, 0))
        say(f"read b's space on {addr}", ok, r if not ok else "data")
    ok, space = c.json("create_space", {"vnode": os.environ["LEGO_RT_VNODE"]})
    asid = space["asid"]
    ok, placed = c.json("assign_vregion", {"asid": asid, "index": 0})
    m = connect(placed["primary"]["addr"])
    ok, r = write_pages(m, asid, 1 << 40, 1)
    say("write outside the vregion placed", ok, r)
    written = 0
    while True:
        ok, r = write_pages(m, asid, written, 256)
        if not ok:
            break
        written += 256
    say(f"write past the quota ({written * 4096 >> 20} MiB written)", ok, r)


def storage():
    """Setuid files, other owners, the disk quota, open files."""
    import shutil

    shutil.copy("/bin/sh", "/data/sh")
    os_error("chmod setuid", lambda: os.chmod("/data/sh", 0o4755))
    os_error("chmod setgid", lambda: os.chmod("/data/sh", 0o2755))
    os_error("create setuid", lambda: os.close(os.open("/data/s2", os.O_CREAT | os.O_WRONLY, 0o4755)))
    print(f"mode of a file created setuid: {oct(os.stat('/data/s2').st_mode & 0o7777)}", flush=True)
    os_error("chown to another user", lambda: os.chown("/data/sh", 1000, 1000))
    os_error("chown to itself", lambda: os.chown("/data/sh", 0, 0))
    handles = []
    try:
        while len(handles) < 100000:
            handles.append(os.open(f"/data/f{len(handles) % 4}", os.O_CREAT | os.O_RDONLY, 0o644))
        say("open files without end", True, len(handles))
    except OSError as e:
        say(f"open files without end ({len(handles)})", False, errno.errorcode.get(e.errno))
    for h in handles:
        os.close(h)
    chunk = b"\xcd" * (1 << 20)
    n = 0
    try:
        with open("/data/big", "wb") as f:
            while n < 4096:
                f.write(chunk)
                f.flush()
                n += 1
        say("fill the disk", True, n)
    except OSError as e:
        say(f"fill the disk ({n} MiB)", False, errno.errorcode.get(e.errno))
    os.remove("/data/big")
    os_error("write after freeing", lambda: open("/data/after", "w").write("room again\n"))


if __name__ == "__main__":
    attack, args = sys.argv[1], sys.argv[2:]
    globals()[attack.replace("-", "_")](*args)
