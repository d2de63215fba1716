"""A real nginx load balancer (Debian `nginx`) with a test CA, for step 06's lesson, grader and tests.

The production "conf.d fragment" model, as in the official nginx image (/etc/nginx/nginx.conf
owned by the image, `include /etc/nginx/conf.d/*.conf`, templates rendered from environment
variables at start): the LEARNER owns an http-context fragment, `balancer/nginx.conf.template`,
with only `upstream` and `server` blocks and these placeholders

    ${REPLICA_1}, ${REPLICA_2}, ...  host:port of each replica      ${HTTP_PORT}, ${HTTPS_PORT}
    ${TLS_CERT}, ${TLS_KEY}           server certificate chain and key (PEM files)

The kit substitutes ONLY these names (nginx's own `$host`, `$remote_addr`, `${request_id}` stay), and
writes the main nginx.conf it owns: pid, error_log, temp paths under a temporary prefix, `events {}`,
`http { log_format ...; access_log <prefix>/logs/access.log; include <rendered fragment>; }`.

    from coursekit.balancer import Balancer, TestCA
    from coursekit.replicas import ReplicaSet

    with ReplicaSet("steps/06-optimization", n=2, env=env) as rs, TestCA() as ca, \\
         Balancer("steps/06-optimization/balancer/nginx.conf.template", replicas=rs.addresses, tls=ca) as lb:
        httpx.get(lb.https_url + "/health", verify=lb.ssl_context())   # curl --cacert lb.ca_file
        lb.upstream_counts()          # {"127.0.0.1:41234": 5, "127.0.0.1:41235": 5} from the access log

`Balancer.check()` runs `nginx -t` (returns an NginxResult with its output, Korean `summary()`);
`start()` raises BalancerError whose `.output` is nginx's own text when the fragment is wrong.
nginx runs in the foreground (`-g 'daemon off;'`), is waited for until its ports accept
connections, and is stopped by its PID (SIGTERM, then SIGKILL); `reload()` is SIGHUP after a
successful `nginx -t` and returns when the new workers run. Missing nginx: `require_nginx()` skips
with a Korean note, fails under COURSE_REQUIRE_TOOLS=1. Install: `sudo bash .ci/install-redis-nginx.sh`.

Measured on this repository's 2-core machine (nginx 1.22.1): `nginx -t` ≈ 0.03 s, start until both
ports accept ≈ 0.03–0.06 s, reload (SIGHUP until new workers) ≈ 0.1 s; a TestCA (CA + server
certificate, trustme 1.2.1) ≈ 0.05 s. tests/test_step06_kit.py prints them.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .procs import Registry, free_port, port_open, skip_or_fail, stop_process, wait_until

__all__ = ["Balancer", "BalancerError", "NginxResult", "TestCA", "find_nginx", "placeholders", "render_fragment",
           "require_nginx", "running", "stop_all"]

INSTALL_HINT = "설치: sudo bash .ci/install-redis-nginx.sh (Debian/Ubuntu 패키지 nginx)"
FIXED_PLACEHOLDERS = ("HTTP_PORT", "HTTPS_PORT", "TLS_CERT", "TLS_KEY")
_PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")
ACCESS_LOG_FORMAT = ('$remote_addr [$time_iso8601] "$request" $status upstream=$upstream_addr '
                     'upstream_status=$upstream_status rt=$request_time')


class BalancerError(RuntimeError):
    """nginx refused the configuration or did not start (Korean message; `.output` = nginx's text)."""

    def __init__(self, message: str, output: str = ""):
        super().__init__(message)
        self.output = output


def find_nginx() -> str | None:
    for path in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if path and os.access(path, os.X_OK):
            return path
    return None


def require_nginx(reason: str = "nginx 가 필요한 검사입니다") -> None:
    """Inside pytest: skip with a Korean note when nginx is missing, or fail under COURSE_REQUIRE_TOOLS=1."""
    if find_nginx() is None:
        skip_or_fail(f"nginx 가 없어 건너뜁니다: {reason}. {INSTALL_HINT}")


# --------------------------------------------------------------------------- the test CA
class TestCA:
    """A throwaway certificate authority (trustme) and one server certificate for 127.0.0.1 and
    localhost, written to a temporary folder: `.ca_file` (curl --cacert; for httpx pass `verify=ca.ssl_context()`),
    `.cert_file` (server chain), `.key_file`. Removed by `close()` / the end of the `with`."""

    __test__ = False   # not a pytest class

    def __init__(self, hostnames: Sequence[str] = ("127.0.0.1", "localhost")):
        import trustme

        self.hostnames = tuple(hostnames)
        self.folder = Path(tempfile.mkdtemp(prefix="course-ca-"))
        self.ca = trustme.CA(organization_name="MLOps course test CA")
        self.server_cert = self.ca.issue_cert(*self.hostnames)
        self.ca_file = self.folder / "ca.pem"
        self.cert_file = self.folder / "server.pem"
        self.key_file = self.folder / "server.key"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        for i, pem in enumerate(self.server_cert.cert_chain_pems):
            pem.write_to_path(str(self.cert_file), append=i > 0)
        self.server_cert.private_key_pem.write_to_path(str(self.key_file))

    def ssl_context(self):
        """An ssl.SSLContext that trusts only this CA (for clients other than httpx)."""
        import ssl

        return ssl.create_default_context(cafile=str(self.ca_file))

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> TestCA:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------- rendering
def placeholders(text: str) -> set[str]:
    """The `${NAME}` placeholders (upper-case names) a fragment uses."""
    return set(_PLACEHOLDER.findall(text))


def render_fragment(text: str, values: dict[str, str]) -> str:
    """Replace `${NAME}` for the names in `values` only; every other `$...` (nginx variables,
    lower-case `${request_id}`) is left for nginx."""
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), text)


def _address(replica) -> str:
    """host:port from an int port, "host:port", or a URL."""
    if isinstance(replica, int):
        return f"127.0.0.1:{replica}"
    s = str(replica)
    s = re.sub(r"^[a-z]+://", "", s).rstrip("/")
    return s


@dataclass
class NginxResult:
    """Outcome of `nginx -t`: `ok`, nginx's `output`, a Korean `summary()`."""

    returncode: int
    output: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def summary(self) -> str:
        head = "nginx -t: " + ("통과" if self.ok else f"실패 (종료 코드 {self.returncode})")
        return "\n".join([head, *("    " + ln for ln in self.output.strip().splitlines() if ln.strip())])

    def __bool__(self) -> bool:
        return self.ok


# --------------------------------------------------------------------------- the balancer
# What this module started: listed by running(), stopped by stop_all() and at exit (by PID).
_STARTED = Registry("stop")
running = _STARTED.running
stop_all = _STARTED.stop_all


class Balancer:
    """nginx on 127.0.0.1 with the learner's fragment in front of `replicas`.

    `fragment`: a path to the template (or its text); `replicas`: ports, "host:port" or URLs,
    one per `${REPLICA_N}`; `tls`: a TestCA (one is made and removed with the balancer if None).
    """

    port_retries = 3

    def __init__(self, fragment: str | os.PathLike, replicas: Iterable, *, tls: TestCA | None = None,
                 http_port: int | None = None, https_port: int | None = None, timeout: float = 10.0):
        p = Path(fragment) if not (isinstance(fragment, str) and "\n" in fragment) else None
        if p is not None and not p.is_file():
            raise BalancerError(f"nginx 설정 조각 {p} 이(가) 없습니다.")
        self.fragment_path = p
        self.template = p.read_text(encoding="utf-8") if p is not None else str(fragment)
        self.replicas = [_address(r) for r in replicas]
        self._own_ca = tls is None
        self.tls = tls
        self.http_port = http_port or 0
        self.https_port = https_port or 0
        self._fixed_ports = http_port is not None and https_port is not None
        self.timeout = timeout
        self.prefix: Path | None = None
        self.process: subprocess.Popen | None = None
        self.startup_seconds: float | None = None
        self.last_error_log = ""

    # ---- properties ---------------------------------------------------------------
    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def https_url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    @property
    def ca_file(self) -> str:
        assert self.tls is not None
        return str(self.tls.ca_file)

    def ssl_context(self):
        """An ssl.SSLContext trusting only the test CA: httpx `verify=` (httpx 0.28 deprecates a
        path string there; `ca_file` is for curl --cacert and other tools)."""
        assert self.tls is not None
        return self.tls.ssl_context()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def conf_path(self) -> Path:
        assert self.prefix is not None
        return self.prefix / "nginx.conf"

    @property
    def rendered_path(self) -> Path:
        assert self.prefix is not None
        return self.prefix / "conf.d" / "default.conf"

    def values(self) -> dict[str, str]:
        """What each placeholder becomes."""
        assert self.tls is not None
        v = {f"REPLICA_{i}": addr for i, addr in enumerate(self.replicas, start=1)}
        v.update(HTTP_PORT=str(self.http_port), HTTPS_PORT=str(self.https_port),
                 TLS_CERT=str(self.tls.cert_file), TLS_KEY=str(self.tls.key_file))
        return v

    def rendered(self) -> str:
        return render_fragment(self.template, self.values())

    def unknown_placeholders(self) -> list[str]:
        """`${NAME}` in the fragment that the kit does not fill (typos such as ${REPLICA1})."""
        return sorted(placeholders(self.template) - set(self.values()))

    # ---- files --------------------------------------------------------------------
    def _write(self) -> None:
        if self.tls is None:
            self.tls = TestCA()
        if self.prefix is None:
            self.prefix = Path(tempfile.mkdtemp(prefix="course-nginx-"))
            for sub in ("logs", "conf.d", "temp/client_body", "temp/proxy", "temp/fastcgi", "temp/uwsgi",
                        "temp/scgi"):
                (self.prefix / sub).mkdir(parents=True, exist_ok=True)
        if not self._fixed_ports and not (self.http_port and self.https_port):
            self.http_port, self.https_port = free_port(), free_port()
        self.rendered_path.write_text(self.rendered(), encoding="utf-8")
        t = self.prefix / "temp"
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name};\n" if os.geteuid() == 0 else ""
        self.conf_path.write_text(
            "# written by coursekit.balancer (the kit owns this file; the learner owns conf.d/)\n"
            f"{user}"
            "worker_processes 1;\n"
            f"pid {self.prefix / 'logs' / 'nginx.pid'};\n"
            f"error_log {self.prefix / 'logs' / 'error.log'} warn;\n"
            "events { worker_connections 1024; }\n"
            "http {\n"
            f"    client_body_temp_path {t / 'client_body'};\n"
            f"    proxy_temp_path {t / 'proxy'};\n"
            f"    fastcgi_temp_path {t / 'fastcgi'};\n"
            f"    uwsgi_temp_path {t / 'uwsgi'};\n"
            f"    scgi_temp_path {t / 'scgi'};\n"
            f"    log_format course '{ACCESS_LOG_FORMAT}';\n"
            f"    access_log {self.prefix / 'logs' / 'access.log'} course;\n"
            f"    include {self.rendered_path};\n"
            "}\n", encoding="utf-8")

    def _cmd(self, *extra: str) -> list[str]:
        nginx = find_nginx()
        if nginx is None:
            raise BalancerError(f"nginx 가 설치되어 있지 않습니다. {INSTALL_HINT}")
        return [nginx, "-p", str(self.prefix), "-e", str(self.prefix / "logs" / "error.log"),
                "-c", str(self.conf_path), *extra]

    def check(self) -> NginxResult:
        """Render the fragment and run `nginx -t` on the whole configuration."""
        self._write()
        proc = subprocess.run(self._cmd("-t"), capture_output=True, text=True, timeout=30, check=False,
                              stdin=subprocess.DEVNULL)
        out = (proc.stdout + proc.stderr).replace(str(self.rendered_path), "nginx.conf.template(렌더링됨)")
        return NginxResult(proc.returncode, out.strip())

    # ---- lifecycle ----------------------------------------------------------------
    def start(self) -> Balancer:
        if self.alive:
            return self
        began = time.monotonic()
        for attempt in range(1 if self._fixed_ports else self.port_retries):
            result = self.check()
            if not result.ok:
                unknown = self.unknown_placeholders()
                note = (f" 채워지지 않은 자리표시자: {', '.join('${' + u + '}' for u in unknown)} "
                        f"(쓸 수 있는 것: {', '.join('${' + k + '}' for k in self.values())})." if unknown else "")
                self._cleanup()
                raise BalancerError(f"nginx 가 설정을 거부했습니다 (nginx -t).{note}\n{result.summary()}",
                                    result.output)
            log = open(self.prefix / "logs" / "stderr.log", "ab")
            with log:
                self.process = subprocess.Popen(self._cmd("-g", "daemon off;"), cwd=self.prefix, stdout=log,
                                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                start_new_session=True)
            _STARTED.add(self)
            ports = self._ports()
            deadline = began + self.timeout
            while self.process.poll() is None and not all(port_open(p) for p in ports):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.01)
            if self.process.poll() is None and all(port_open(p) for p in ports):
                self.startup_seconds = time.monotonic() - began
                return self
            err = self.error_log()
            stop_process(self.process, 5)
            if "Address already in use" in err and attempt + 1 < self.port_retries and not self._fixed_ports:
                self.http_port = self.https_port = 0
                continue
            self._cleanup()
            what = (f"시작하자마자 종료되었습니다 (종료 코드 {self.process.returncode})" if self.process.poll() is not None
                    else f"{self.timeout:.0f}초 안에 포트 {', '.join(map(str, ports))} 를 열지 않았습니다 "
                         f"(설정 조각이 listen ${{HTTP_PORT}} 와 listen ${{HTTPS_PORT}} ssl 을 쓰나요?)")
            raise BalancerError(f"nginx 가 {what}.\n--- nginx error.log (마지막 줄) ---\n"
                                + "\n".join(err.splitlines()[-15:]), err)
        raise AssertionError("unreachable")

    def _ports(self) -> list[int]:
        used = placeholders(self.template)
        return [p for name, p in (("HTTP_PORT", self.http_port), ("HTTPS_PORT", self.https_port)) if name in used]

    def reload(self, replicas: Iterable | None = None, fragment: str | os.PathLike | None = None, *,
               wait_old: bool = True) -> NginxResult:
        """Re-render (optionally with other replicas or another fragment), `nginx -t`, then SIGHUP
        and wait until the new worker runs. A refused configuration raises BalancerError and the
        old one keeps serving (as nginx does). The old workers stop taking connections at once but
        finish their requests: `wait_old` (default) waits for them too; `wait_old=False` returns as
        soon as the new workers run (their requests still going, e.g. to a replica being drained)."""
        if not self.alive:
            raise BalancerError("nginx 가 실행 중이 아닙니다 (start() 먼저).")
        old_template, old_replicas = self.template, self.replicas
        if replicas is not None:
            self.replicas = [_address(r) for r in replicas]
        if fragment is not None:
            p = Path(fragment) if not (isinstance(fragment, str) and "\n" in fragment) else None
            self.template = p.read_text(encoding="utf-8") if p is not None else str(fragment)
        result = self.check()
        if not result.ok:
            self.template, self.replicas = old_template, old_replicas
            self._write()
            raise BalancerError(f"nginx 가 새 설정을 거부했습니다 (이전 설정으로 계속 동작).\n{result.summary()}",
                                result.output)
        before = self._workers()
        os.kill(self.process.pid, signal.SIGHUP)

        def new_workers_run() -> bool:
            now = self._workers()
            return bool(now) and (not (now & before) if wait_old else bool(now - before))

        wait_until(new_workers_run, self.timeout, interval=0.02)
        return result

    def drained(self, address: str) -> list[str]:
        """The replica list with `address` replaced by another replica: reload with it to take that
        replica out of rotation (each `${REPLICA_N}` still filled, so the learner's fragment renders)."""
        others = [a for a in self.replicas if a != _address(address)]
        if not others:
            raise BalancerError(f"{address} 말고 요청을 받을 복제본이 없습니다.")
        return [others[0] if a == _address(address) else a for a in self.replicas]

    def _workers(self) -> set[int]:
        try:
            text = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text()
        except OSError:
            return set()
        return {int(x) for x in text.split()}

    def stop(self, grace: float = 5.0) -> None:
        """Stop nginx by its PID (SIGTERM, then SIGKILL) and remove the prefix (and an own TestCA)."""
        _STARTED.discard(self)
        if self.process is not None:
            stop_process(self.process, grace)
        self._cleanup()

    def _cleanup(self) -> None:
        if self.prefix is not None:
            self.last_error_log = self.error_log()
            shutil.rmtree(self.prefix, ignore_errors=True)
            self.prefix = None
        if self._own_ca and self.tls is not None:
            self.tls.close()
            self.tls = None

    def __enter__(self) -> Balancer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"PID {self.pid}, {self.http_url}, {self.https_url}" if self.alive else "멈춤"
        return f"<Balancer {state}>"

    # ---- logs ---------------------------------------------------------------------
    def error_log(self) -> str:
        if self.prefix is None:
            return self.last_error_log
        texts = []
        for name in ("error.log", "stderr.log"):
            try:
                texts.append((self.prefix / "logs" / name).read_text(encoding="utf-8", errors="replace"))
            except FileNotFoundError:
                pass
        return "\n".join(t for t in texts if t)

    def access_log(self) -> list[str]:
        """Lines of the access log (format ACCESS_LOG_FORMAT, unless the fragment sets its own access_log)."""
        if self.prefix is None:
            return []
        try:
            return (self.prefix / "logs" / "access.log").read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def served(self, address: str) -> int:
        """Requests in the access log that `address` ("host:port") finally answered with a status
        below 500 (the last entry of $upstream_addr / $upstream_status)."""
        n = 0
        for line in self.access_log():
            m = re.search(r" upstream=(.*?) upstream_status=(.*?) rt=", line)
            if not m:
                continue
            addr = m.group(1).split(", ")[-1].strip()
            status = m.group(2).split(", ")[-1].strip()
            if addr == address and status.isdigit() and int(status) < 500:
                n += 1
        return n

    def wait_served(self, address: str, timeout: float = 15.0, since: int | None = None) -> float:
        """Wait (while traffic flows) until nginx sends a request to `address` again and it answers:
        after a restart nginx keeps a peer that refused a connection marked failed for its
        fail_timeout and then revives it with one trial request. Seconds waited; BalancerError on
        timeout. `since`: the `served(address)` count to exceed (default: the count now)."""
        began = time.monotonic()
        base = self.served(address) if since is None else since
        if wait_until(lambda: self.served(address) > base, timeout):
            return time.monotonic() - began
        raise BalancerError(f"nginx 가 {timeout:.0f}초 안에 복제본 {address} 로 요청을 다시 보내지 않았습니다 "
                            f"(fail_timeout 이 너무 길거나, 트래픽이 없거나, 복제본이 답하지 않음).")

    def upstream_counts(self) -> Counter:
        """How many requests each upstream address answered, from the access log (an address that
        failed and was retried on the next one counts for both: nginx logs "a, b")."""
        c: Counter = Counter()
        for line in self.access_log():
            m = re.search(r" upstream=(\S[^ ]*(?:, \S+)*) upstream_status=", line)
            if m and m.group(1) != "-":
                for addr in m.group(1).split(", "):
                    c[addr.strip()] += 1
        return c
