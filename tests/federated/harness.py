"""Process orchestration for the federated harness: a SuperLink (Simulation or Deployment
Runtime), SuperNodes, and `flwr run`, all on 127.0.0.1 with free ports, logs kept in a work
directory, every process stopped at the end (SIGTERM to its own process group, SIGKILL after a
grace period). Used by test_federated.py; also runnable by hand:

    python tests/federated/harness.py sim --method exact --rounds 3 --out /tmp/fed
    python tests/federated/harness.py deploy --out /tmp/fed

The `flwr` CLI, `flower-superlink` and `flower-supernode` are taken from the directory of the
Python that runs this file (the test venv), so the run uses that venv's `tailor` and `flwr`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port free now on 127.0.0.1 and not handed out before by this process (the kernel can
    give a just-released ephemeral port twice in a row: two SuperNodes once got the same one)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.3)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))


def config_arg(cfg: dict) -> str:
    """`k1=v1 k2="v2"` as `flwr run --run-config` / `--federation-config` take it."""
    return " ".join(f"{k}={_toml_value(v)}" for k, v in cfg.items())


class Federation:
    """A SuperLink and its SuperNodes, started by this process and stopped by `close()`."""

    def __init__(self, workdir: Path, *, simulation: bool, threads: int | None = None):
        # Absolute: the processes run in it, and FLWR_HOME must not be resolved against it.
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.simulation = simulation
        self.home = self.workdir / "flwr-home"
        self.home.mkdir(exist_ok=True)
        self.procs: list[tuple[str, subprocess.Popen, object]] = []
        self.port = free_port()
        self.connection = "tailor-sim" if simulation else "tailor-deploy"
        self.env = dict(os.environ)
        self.env.update(
            {
                "FLWR_HOME": str(self.home),
                "FLWR_TELEMETRY_ENABLED": "0",
                "FLWR_DISABLE_UPDATE_CHECK": "1",
                "RAY_USAGE_STATS_ENABLED": "0",
                "RAY_DISABLE_DOCKER_CPU_WARNING": "1",
                "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
                "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                "PYTHONUNBUFFERED": "1",
            }
        )
        if threads:
            self.env["TAILOR_FED_THREADS"] = str(threads)
        (self.home / "config.toml").write_text(
            "[superlink]\n"
            f'default = "{self.connection}"\n\n'
            f"[superlink.{self.connection}]\n"
            f'address = "127.0.0.1:{self.port}"\n'
            "insecure = true\n",
            encoding="utf-8",
        )

    # -- processes -------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "w", encoding="utf-8")
        p = subprocess.Popen(
            argv,
            env=self.env,
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: its children stop with it
        )
        self.procs.append((name, p, log))
        return p

    def start_superlink(self, timeout: float = 60.0) -> None:
        argv = [
            str(BIN / "flower-superlink"),
            "--insecure",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--disable-runtime-dependency-installation",
        ]
        if self.simulation:
            argv.append("--simulation")
        p = self._spawn("superlink", argv)
        deadline = time.time() + timeout
        while not _port_open(self.port):
            if p.poll() is not None:
                raise RuntimeError(f"flower-superlink exited ({p.returncode}); see {self.workdir / 'superlink.log'}")
            if time.time() > deadline:
                raise RuntimeError(f"flower-superlink not listening on {self.port} after {timeout} s")
            time.sleep(0.2)

    def start_supernode(self, partition: int, node_config: dict | None = None, timeout: float = 60.0) -> None:
        """Starts SuperNode `partition` and waits until its own HTTP API listens (so a node
        that failed to start is seen here, not as a run that waits for it forever)."""
        cfg = {"partition-id": partition}
        cfg.update(node_config or {})
        port = free_port()
        argv = [
            str(BIN / "flower-supernode"),
            "--insecure",
            "--superlink",
            f"127.0.0.1:{self.port}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--node-config",
            config_arg(cfg),
            "--max-retries",
            "60",
        ]
        name = f"supernode-{partition}"
        p = self._spawn(name, argv)
        deadline = time.time() + timeout
        while not _port_open(port):
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited ({p.returncode}); see {self.workdir / (name + '.log')}")
            if time.time() > deadline:
                raise RuntimeError(f"{name} not listening on {port} after {timeout} s")
            time.sleep(0.2)

    def dead(self) -> list[str]:
        """The processes started here that have exited (none should before `close()`)."""
        return [name for name, p, _ in self.procs if p.poll() is not None]

    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "flwr"), *args], env=self.env, cwd=self.workdir,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)

    def run(self, run_config: dict, *, federation_config: dict | None = None, timeout: float = 1800.0,
            name: str = "run", done_file: Path | None = None) -> dict:
        """Submits the app with `flwr run APP CONNECTION`, waits until Flower reports the run
        finished (`flwr list --run-id`), then fetches its whole log (`flwr log`) into
        <workdir>/<name>.log. Returns {"status", "run_id", "log", "info"} where info is Flower's
        own record of the run (elapsed, network traffic, compute time)."""
        argv = ["run", str(APP_DIR), self.connection, "--format", "json"]
        if run_config:
            argv += ["--run-config", config_arg(run_config)]
        if federation_config:
            argv += ["--federation-config", config_arg(federation_config)]
        log_path = self.workdir / f"{name}.log"
        submitted = self.flwr(*argv)
        with open(log_path, "w", encoding="utf-8") as log:
            log.write("$ flwr " + " ".join(argv) + "\n" + submitted.stdout + submitted.stderr)
        try:
            run_id = json.loads(submitted.stdout)["run-id"]
        except (ValueError, KeyError):
            return {"status": "not-submitted", "run_id": None, "log": log_path.read_text(), "info": {}}
        deadline = time.time() + timeout
        info, last_poll = {}, 0.0
        while True:
            now = time.time()
            # The ServerApp's results file appearing is the cheap signal; Flower's own status
            # (a CLI call, ~1 s of CPU) is asked every 10 s and once the file is there.
            if now - last_poll > 10.0 or (done_file is not None and done_file.exists()):
                last_poll = now
                r = self.flwr("list", self.connection, "--run-id", str(run_id), "--format", "json")
                try:
                    info = json.loads(r.stdout)["runs"][0]
                except (ValueError, KeyError, IndexError):
                    info = {"status": "unknown", "raw": r.stdout[-500:] + r.stderr[-500:]}
                if str(info.get("status", "")).startswith("finished"):
                    break
            if now > deadline:
                self.flwr("stop", str(run_id), self.connection)
                info["status"] = "timeout"
                break
            dead = self.dead()
            if dead:
                # A SuperLink or SuperNode died: the run would wait for it until the timeout.
                self.flwr("stop", str(run_id), self.connection)
                info["status"] = f"aborted: {', '.join(dead)} exited"
                break
            time.sleep(1.0)
        logs = self.flwr("log", str(run_id), self.connection, "--stream", timeout=300)
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(logs.stdout + logs.stderr)
            log.write("\n# flwr list: " + json.dumps(info) + "\n")
        return {"status": info.get("status"), "run_id": run_id, "log": log_path.read_text(errors="replace"),
                "info": info}

    def alive(self) -> dict[str, int | None]:
        return {name: p.poll() for name, p, _ in self.procs}

    def close(self, grace: float = 15.0) -> dict[str, int | None]:
        """Stops the SuperNodes, then the SuperLink; returns each one's exit code."""
        codes = {}
        for name, p, log in reversed(self.procs):
            codes[name] = _stop_group(p, grace)
            log.close()
        self.procs.clear()
        return codes

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after its ')'
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(d.name))
    return kids


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (Flower's SuperExec / ServerApp / Simulation and Ray's
    processes start sessions of their own, so a process group does not hold them all)."""
    kids, out, todo = _children_map(), [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _stop_group(p: subprocess.Popen, grace: float = 15.0) -> dict:
    """SIGTERM to `p` (and its process group: it was started in a session of its own), SIGKILL
    after `grace` seconds; then the same for every descendant it leaves behind. Returns
    {"code": exit code, "killed": whether `p` needed SIGKILL, "stray": descendants that
    needed SIGKILL}."""
    below = descendants(p.pid)
    killed = False
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            killed = True
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=10)
    below = [d for d in below if _alive(d)]
    for d in below:
        _signal(d, signal.SIGTERM)
    deadline = time.time() + 10.0
    while time.time() < deadline and any(_alive(d) for d in below):
        time.sleep(0.2)
    stray = [d for d in below if _alive(d)]
    for d in stray:
        _signal(d, signal.SIGKILL)
    return {"code": p.returncode, "killed": killed, "stray": len(stray)}


def simulate(workdir: Path, run_config: dict, *, num_supernodes: int = 8, cpus_per_client: int = 1,
             total_cpus: int = 2, threads: int | None = 1, timeout: float = 1800.0, name: str = "run"):
    """One run on the Simulation Runtime (Ray), in its own SuperLink; returns `Federation.run`'s
    dict plus "results" (the ServerApp's JSON summary) and "stopped" (exit codes)."""
    results = Path(workdir).resolve() / f"{name}.json"
    rc = dict(run_config)
    rc["results"] = str(results)
    with Federation(workdir, simulation=True, threads=threads) as fed:
        fed.start_superlink()
        fed_cfg = {
            "num-supernodes": num_supernodes,
            "client-resources-num-cpus": cpus_per_client,
            "init-args-num-cpus": total_cpus,
        }
        run = fed.run(rc, federation_config=fed_cfg, timeout=timeout, name=name, done_file=results)
        run["stopped"] = fed.close()
    run["results"] = json.loads(results.read_text()) if results.exists() else None
    return run


def deploy(workdir: Path, run_config: dict, *, num_supernodes: int = 2, threads: int | None = 1,
           timeout: float = 1800.0, name: str = "deploy"):
    """One run on the Deployment Runtime: a SuperLink and `num_supernodes` SuperNode processes
    (partition i on node i), `flwr run` against them, everything stopped at the end."""
    results = Path(workdir).resolve() / f"{name}.json"
    rc = dict(run_config)
    rc["results"] = str(results)
    with Federation(workdir, simulation=False, threads=threads) as fed:
        fed.start_superlink()
        for i in range(num_supernodes):
            fed.start_supernode(i)
        run = fed.run(rc, timeout=timeout, name=name, done_file=results)
        run["alive_before_stop"] = fed.alive()
        run["stopped"] = fed.close()
    run["results"] = json.loads(results.read_text()) if results.exists() else None
    return run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["sim", "deploy"])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--method", default="exact")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("-c", "--config", action="append", default=[], help="extra run-config k=v")
    a = ap.parse_args(argv)
    rc = {"method": a.method, "num-server-rounds": a.rounds, "num-clients": a.clients,
          "min-nodes": a.clients, "heldout-clients": a.clients}
    for kv in a.config:
        k, v = kv.split("=", 1)
        try:
            rc[k] = json.loads(v)
        except json.JSONDecodeError:
            rc[k] = v
    if a.mode == "sim":
        run = simulate(a.out, rc, num_supernodes=a.clients)
    else:
        run = deploy(a.out, rc, num_supernodes=a.clients)
    print("\n".join(l for l in run["log"].splitlines() if l.startswith("[tailor]")))
    print("status:", run["status"], "stopped:", run["stopped"])
    return 0 if run["status"] == "finished:completed" and run["results"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
