"""The ways a source QEMU can reach the destination QEMU's NBD server.

Each transport is started fresh for every run. listen(rundir) says where the destination QEMU's
NBD server listens (an NbdAddress: the UNIX socket rundir/dst-nbd.sock unless the transport is
QEMU's own TCP or TLS); start(dst, rundir) returns the NbdAddress the source side connects to;
relay_pids() are the roots of the relay process trees whose CPU and memory are measured; stop()
ends them.
"""

import getpass
import os
import re
import subprocess
from pathlib import Path

from nbdaddr import TLS13_PRIORITY, NbdAddress
from procs import Proc, free_port, wait_for_tcp_listen, wait_for_unix_socket


class Transport:
    """What every transport shares: the destination QEMU listens on a UNIX socket in the run dir."""

    def listen(self, rundir):
        return NbdAddress.unix(Path(rundir) / "dst-nbd.sock")

    def relay_pids(self):
        return []

    def stop(self):
        pass


class DelayLine:
    """bench/tools/delay_line between a TCP client and a TCP server: every chunk held for
    delay_ms in each direction (so a round trip of 2 x delay_ms), unlimited buffering inside."""

    def __init__(self, binary, delay_ms):
        self.binary, self.delay_ms = binary, delay_ms
        self._proc = None

    def start(self, port, rundir):
        """Starts the line towards 127.0.0.1:port; returns the port it listens on."""
        self._proc = Proc([self.binary, "--listen", "127.0.0.1:0", "--connect", f"127.0.0.1:{port}",
                           "--delay-ms", f"{self.delay_ms:g}"], Path(rundir) / "delay-line.log")
        return int(self._proc.wait_for_line(r"listening on [^\s:]+:(\d+)").group(1))

    def pid(self):
        return self._proc.pid if self._proc else None

    def stop(self):
        if self._proc:
            self._proc.stop()
            self._proc = None


def through_delay_line(t, line):
    """Puts `line` on t's TCP hop (QEMU's NBD connection, or nbdtunnel's channel): t's name
    gets "@<delay>ms". Other transports have no TCP hop of their own to delay."""
    if not isinstance(t, (QemuTcp, Nbdtunnel)) or getattr(t, "tls", None) and "--tls-dir" in t.tls:
        raise SystemExit(f"transport {t.name} cannot run through the delay line "
                         "(only qemu-tcp and plain nbdtunnel transports can)")
    t.delay = line
    t.name += f"@{line.delay_ms:g}ms"
    t.description += (f"; its TCP connection through bench/tools/delay_line holding every chunk "
                      f"{line.delay_ms:g} ms each way (round trip {2 * line.delay_ms:g} ms); the line's "
                      "CPU is not counted as relay CPU (it stands for the network)")
    return t


class Direct(Transport):
    """No relay: the source connects straight to the destination's socket. The upper bound."""

    name = "direct"
    description = "source QEMU connects to the destination QEMU's NBD UNIX socket"

    def start(self, dst, rundir):
        return dst


class QemuTcp(Transport):
    """No relay: the destination QEMU's NBD server listens on TCP 127.0.0.1, the source dials it
    (or dials a DelayLine in front of it: see through_delay_line)."""

    def __init__(self):
        self.delay = None
        self.name = "qemu-tcp"
        self.description = ("no relay: the destination qemu-storage-daemon's NBD server on TCP 127.0.0.1 "
                            "(a free port), the source connects to it (plain NBD, no TLS)")

    def listen(self, rundir):
        return NbdAddress.tcp("127.0.0.1", free_port())

    def start(self, dst, rundir):
        if not self.delay:
            return dst
        return NbdAddress.tcp("127.0.0.1", self.delay.start(dst.port, rundir))

    def stop(self):
        if self.delay:
            self.delay.stop()


class QemuTls(Transport):
    """QEMU's own NBD over mutual x509 TLS 1.3: tls-creds-x509 on the server and on each client."""

    name = "qemu-tls"

    def __init__(self, tls_dir):
        self.tls_dir = str(tls_dir)
        self.description = (
            "no relay: the destination qemu-storage-daemon's NBD server on TCP 127.0.0.1 with "
            f"`--object tls-creds-x509,endpoint=server,dir={self.tls_dir},verify-peer=on,"
            f"priority={TLS13_PRIORITY}` and `tls-creds` on the nbd-server; the source QEMU's "
            "blockdev-add nbd has `tls-creds` of an object-added tls-creds-x509 endpoint=client "
            "(same dir and priority: it presents client-cert.pem and checks the server's SAN against "
            "127.0.0.1); nbdcopy uses nbds://127.0.0.1:PORT/disk0?tls-certificates=DIR (libnbd, "
            "GnuTLS). Mutual x509, TLS 1.3 only, GnuTLS's default cipher order (AES-256-GCM here)")

    def listen(self, rundir):
        return NbdAddress.tcp("127.0.0.1", free_port(), self.tls_dir)

    def start(self, dst, rundir):
        return dst


class Nbdtunnel(Transport):
    """nbdtunnel dest + nbdtunnel source on 127.0.0.1, one channel.

    tls_dir: mutual TLS on the channel with that certificate directory (`--tls-dir` to both
    roles). plain_flags: what the roles need to run without TLS once they have TLS (`--no-tls`
    when their --help offers it; nothing before).
    """

    def __init__(self, binary, mode=None, mode_roles=(), extra_args=(), label="nbdtunnel",
                 tls_dir=None, plain_flags=(), dest_args=()):
        self.binary = binary
        self.dest_args = list(dest_args)  # for the dest only (e.g. --resume-timeout 0)
        self.delay = None  # a DelayLine on the channel's TCP connection (through_delay_line)
        self.mode = mode
        self.mode_roles = mode_roles  # roles whose --help offers --copy-mode
        self.extra = list(extra_args)
        self.tls = ["--tls-dir", str(tls_dir)] if tls_dir else list(plain_flags)
        self.name = f"{label}:{mode}" if mode else label
        self.description = (f"{label} ({binary}) dest+source over TCP 127.0.0.1, "
                            f"copy mode {mode or 'default'}, "
                            + (f"mutual TLS (--tls-dir {tls_dir}, certificates by scripts/make-certs.sh)"
                               if tls_dir else "no TLS" + (f" ({' '.join(plain_flags)})" if plain_flags else ""))
                            + (f", extra args {' '.join(self.extra)}" if self.extra else "")
                            + (f", dest args {' '.join(self.dest_args)}" if self.dest_args else ""))
        self._procs = []

    def _role_args(self, role):
        args = self.tls + self.extra + (self.dest_args if role == "dest" else [])
        if self.mode and role in self.mode_roles:
            args += ["--copy-mode", self.mode]
        return args

    def start(self, dst, rundir):
        src_sock = str(Path(rundir) / "tunnel-src.sock")
        log = Path(rundir) / "nbdtunnel.log"
        dest = Proc([self.binary, "dest", "--listen", "127.0.0.1:0", "--target", f"nbd={dst.path}",
                     *self._role_args("dest")], log)
        self._procs.append(dest)
        port = dest.wait_for_line(r"listening on [^\s:]+:(\d+)").group(1)
        if self.delay:
            port = self.delay.start(int(port), rundir)
        source = Proc([self.binary, "source", "--connect", f"127.0.0.1:{port}",
                       "--forward", f"{src_sock}=nbd", *self._role_args("source")], log)
        self._procs.append(source)
        source.wait_for_line(r"channel connected to")
        wait_for_unix_socket(src_sock, proc=source)
        return NbdAddress.unix(src_sock)

    def relay_pids(self):
        return [p.pid for p in self._procs]

    def stop(self):
        for p in reversed(self._procs):
            p.stop()
        self._procs = []
        if self.delay:
            self.delay.stop()


class Socat(Transport):
    """Two forking socat processes: UNIX-LISTEN -> TCP and TCP-LISTEN -> UNIX-CONNECT."""

    def __init__(self, buf=None):
        self.buf = buf
        self.name = f"socat-b{buf}" if buf else "socat"
        self.description = ("socat UNIX-LISTEN,fork -> TCP 127.0.0.1 -> socat TCP-LISTEN,fork,"
                            "reuseaddr -> UNIX-CONNECT, " + (f"-b {buf}" if buf else "default buffer (8192)"))
        self._procs = []

    def start(self, dst, rundir):
        src_sock = str(Path(rundir) / "socat-src.sock")
        port = free_port()
        b = ["-b", str(self.buf)] if self.buf else []
        log = Path(rundir) / "socat.log"
        dst = Proc(["socat", *b, f"TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr",
                    f"UNIX-CONNECT:{dst.path}"], log)
        self._procs.append(dst)
        wait_for_tcp_listen(port)
        src = Proc(["socat", *b, f"UNIX-LISTEN:{src_sock},fork", f"TCP:127.0.0.1:{port}"], log)
        self._procs.append(src)
        wait_for_unix_socket(src_sock, proc=src)
        return NbdAddress.unix(src_sock)

    def relay_pids(self):
        return [p.pid for p in self._procs]

    def stop(self):
        for p in reversed(self._procs):
            p.stop()
        self._procs = []


class NaiveRelay(Transport):
    """The calibration point: bench/tools/naive_relay on each side, a thread per direction, no
    framing, no multiplexing (one TCP connection per NBD connection), blocking splice TCP -> UNIX
    and read/write UNIX -> TCP. How far the framed engine is from the simplest thing that works."""

    name = "naive-relay"
    description = ("bench/tools/naive_relay: UNIX -> TCP 127.0.0.1 -> UNIX, one TCP connection per "
                   "NBD connection, a thread per direction, splice TCP->UNIX, read/write UNIX->TCP")

    def __init__(self, binary):
        self.binary = binary
        self._procs = []

    def start(self, dst, rundir):
        src_sock = str(Path(rundir) / "naive-src.sock")
        port = free_port()
        log = Path(rundir) / "naive-relay.log"
        d = Proc([self.binary, "--tcp-listen", f"127.0.0.1:{port}", "--unix-connect", str(dst.path)],
                 log)
        self._procs.append(d)
        wait_for_tcp_listen(port)
        s = Proc([self.binary, "--unix-listen", src_sock, "--tcp-connect", f"127.0.0.1:{port}"], log)
        self._procs.append(s)
        wait_for_unix_socket(src_sock, proc=s)
        return NbdAddress.unix(src_sock)

    def relay_pids(self):
        return [p.pid for p in self._procs]

    def stop(self):
        for p in reversed(self._procs):
            p.stop()
        self._procs = []


class SshKeys:
    """A throwaway sshd identity: host key, user key, authorized_keys, all in one directory."""

    def __init__(self, keydir):
        self.dir = Path(keydir)
        self.dir.mkdir(parents=True, exist_ok=True)
        for name in ("host_ed25519", "user_ed25519"):
            if not (self.dir / name).exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "nbdtunnel-bench",
                                "-f", str(self.dir / name)], check=True)
        (self.dir / "authorized_keys").write_text((self.dir / "user_ed25519.pub").read_text())
        os.chmod(self.dir / "authorized_keys", 0o600)


class Ssh(Transport):
    """ssh -N -L src.sock:dst.sock to a private sshd on a high loopback port."""

    def __init__(self, keys, cipher=None):
        self.keys = keys
        self.cipher = cipher
        self.name = f"ssh-{cipher.split('@')[0]}" if cipher else "ssh"
        self.description = (f"ssh -N -L (UNIX socket forwarding) to a private sshd on 127.0.0.1, "
                            f"cipher {cipher or 'default (' + default_ssh_cipher() + ')'}")
        self._procs = []

    def _sshd_config(self, rundir, port):
        d = self.keys.dir
        cfg = Path(rundir) / "sshd_config"
        cfg.write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {d}/host_ed25519
AuthorizedKeysFile {d}/authorized_keys
PidFile none
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowStreamLocalForwarding yes
StreamLocalBindUnlink yes
X11Forwarding no
PrintMotd no
LogLevel ERROR
""")
        return cfg

    def start(self, dst, rundir):
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
        port = free_port()
        src_sock = str(Path(rundir) / "ssh-src.sock")
        log = Path(rundir) / "ssh.log"
        sshd = Proc(["/usr/sbin/sshd", "-D", "-e", "-f", self._sshd_config(rundir, port)], log)
        self._procs.append(sshd)
        wait_for_tcp_listen(port)
        cipher = ["-c", self.cipher] if self.cipher else []
        ssh = Proc(["ssh", "-N", "-F", "/dev/null", "-i", self.keys.dir / "user_ed25519",
                    "-p", str(port), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                    "-o", f"UserKnownHostsFile={self.keys.dir}/known_hosts",
                    "-o", "ExitOnForwardFailure=yes", "-o", "StreamLocalBindUnlink=yes",
                    *cipher, "-L", f"{src_sock}:{dst.path}", f"{getpass.getuser()}@127.0.0.1"], log)
        self._procs.append(ssh)
        wait_for_unix_socket(src_sock, proc=ssh)
        return NbdAddress.unix(src_sock)

    def relay_pids(self):
        return [p.pid for p in self._procs]

    def stop(self):
        for p in reversed(self._procs):
            p.stop()
        self._procs = []


def default_ssh_cipher():
    """The cipher ssh proposes first (what it uses against a default sshd)."""
    out = subprocess.run(["ssh", "-G", "-F", "/dev/null", "localhost"], capture_output=True,
                         text=True).stdout
    for line in out.splitlines():
        if line.startswith("ciphers "):
            return line.split()[1].split(",")[0]
    return "unknown"


def role_help(binary, role):
    """The --help text of one nbdtunnel role (stdout and stderr)."""
    p = subprocess.run([binary, role, "--help"], capture_output=True, text=True)
    return p.stdout + p.stderr


def tls_support(binary):
    """(whether both roles offer --tls-dir, whether both offer --no-tls), from their --help."""
    helps = [role_help(binary, r) for r in ("dest", "source")]
    return all("--tls-dir" in h for h in helps), all("--no-tls" in h for h in helps)


def copy_modes(binary):
    """{role: [modes]} for the roles whose --help offers --copy-mode, parsed from the help text."""
    found = {}
    for role in ("dest", "source"):
        lines = role_help(binary, role).splitlines()
        for i, line in enumerate(lines):
            if "--copy-mode" not in line:
                continue
            # The option's line plus its indented continuation lines.
            block = line
            for cont in lines[i + 1:i + 6]:
                if cont.strip().startswith("-"):
                    break
                block += " " + cont
            found[role] = _parse_modes(block[block.index("--copy-mode"):])
    return found


def _parse_modes(text):
    """Mode names from '{a,b}', '(a|b)', 'a|b|c' or 'one of: a, b' in an option's help text."""
    for rx in (r"\{([\w\-,\s|]+)\}", r"\(([\w\-]+(?:\s*[|,/]\s*[\w\-]+)+)\)",
               r"([\w\-]+(?:\s*\|\s*[\w\-]+)+)", r"one of:?\s*([\w\-]+(?:\s*,\s*[\w\-]+)+)"):
        m = re.search(rx, text)
        if m:
            modes = [t for t in re.split(r"[\s,|/]+", m.group(1)) if t]
            if len(modes) > 1:
                return modes
    return []
