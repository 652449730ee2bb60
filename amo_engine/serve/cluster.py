"""A Ray cluster of several nodes on this machine, for tests and benchmarks of serving across nodes.

Each node is Ray's own ``ray start --block`` process in a session of its own, so a node can be
killed whole (its raylet, agents and workers: every process of that session) and started again.
All nodes share one token (Ray's token authentication, which ``ray start`` turns on) written in the
cluster's folder, never in ``~/.ray``. The application is deployed from a config in Ray Serve's own
schema (``serve_config``) with ``serve run --non-blocking``, as on a real cluster.

Ray advertises a node on the machine's address even when told 127.0.0.1 (it maps loopback to a
reachable address for its own ports); Serve's HTTP proxy binds where the config says (loopback here).
Linux only (sessions are read from /proc).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

APP_NAME = "amo-engine"  # as serve.app.APP_NAME (not imported: that module imports Ray Serve)


def serve_config(args: dict, host: str = "127.0.0.1", port: int = 8000, proxy_location: str = "EveryNode",
                 max_replicas_per_node: int | None = None, gateways: int | None = None) -> dict:
    """A Ray Serve config (``serve deploy`` / ``serve run`` schema) for ``build_app(args)``: ``args``
    are ServiceConfig fields and the runtime's (``model``, ``engine``, ...). ``max_replicas_per_node``
    spreads the renderer replicas over the nodes (1: one a node). ``gateways``: one gateway replica
    on each of that many nodes — a proxy routes to the gateway on its own node, so a node lost takes
    no other node's requests with its gateway (each gateway counts its own per-key requests)."""
    app = {"name": APP_NAME, "route_prefix": "/", "import_path": "amo_engine.serve.app:build_app", "args": args}
    deployments = []
    if max_replicas_per_node is not None:
        deployments.append({"name": "renderer", "max_replicas_per_node": max_replicas_per_node})
    if gateways is not None:
        deployments.append({"name": "gateway", "num_replicas": gateways, "max_replicas_per_node": 1})
    if deployments:
        app["deployments"] = deployments
    return {"proxy_location": proxy_location, "http_options": {"host": host, "port": port}, "applications": [app]}


def _session_pids(sid: int) -> list[int]:
    """The live processes of session ``sid`` (zombies, dead and waiting to be reaped, left out)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                if os.getsid(int(entry)) == sid and stat.rsplit(")", 1)[1].split()[0] != "Z":
                    pids.append(int(entry))
            except OSError:  # gone meanwhile
                pass
    return pids


def kill_session(sid: int, sig: int = signal.SIGKILL, grace: float = 0.0) -> int:
    """Send ``sig`` to every process of session ``sid`` (again until none is left, SIGKILL after
    ``grace`` seconds); returns how many processes the first pass found."""
    found = _session_pids(sid)
    end = time.monotonic() + grace
    while True:
        pids = _session_pids(sid)
        if not pids:
            return len(found)
        for pid in pids:
            try:
                os.kill(pid, sig if time.monotonic() < end else signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.1)


@dataclass
class Node:
    process: subprocess.Popen
    head: bool
    log: Path
    node_id: str | None = None  # Ray's, once it registered

    @property
    def sid(self) -> int:  # started in a session of its own: its id is the process's pid
        return self.process.pid


@dataclass
class LocalCluster:
    """``with LocalCluster(root, port) as cluster: cluster.start(workers=1); cluster.deploy(config)``."""

    root: Path  # token, Ray's temp folder, node logs, the deployed config
    port: int  # the head's GCS port
    cpus_per_node: int = 1
    timeout_s: float = 120.0
    nodes: list[Node] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def env(self) -> dict:
        """What every process of the cluster (and a driver joining it) needs in its environment."""
        return {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.root / "token"),
                "RAY_USAGE_STATS_ENABLED": "0"}

    def _tool(self, name: str) -> str:
        path = Path(sys.executable).with_name(name)
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: install Ray Serve beside this Python (pip install -e '.[serve]')")
        return str(path)

    def _start_node(self, head: bool) -> Node:
        log = self.root / f"node-{len(self.nodes)}{'-head' if head else ''}.log"
        where = (["--head", "--port", str(self.port), "--include-dashboard", "false", "--temp-dir",
                  str(self.root / "ray")] if head else ["--address", self.address])
        command = [self._tool("ray"), "start", *where, "--node-ip-address", "127.0.0.1",
                   "--num-cpus", str(self.cpus_per_node), "--disable-usage-stats", "--block"]
        with open(log, "ab") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=self.env, start_new_session=True)
        node = Node(process, head, log)
        self.nodes.append(node)
        return node

    def start(self, workers: int = 1) -> None:
        """The head, this process joined to it as the driver, then ``workers`` worker nodes."""
        import ray

        self.root.mkdir(parents=True, exist_ok=True)
        token = self.root / "token"
        if not token.exists():
            token.write_text(secrets.token_hex(32))
            token.chmod(0o600)
        if ray.is_initialized():
            raise RuntimeError("this process is already joined to a Ray: a LocalCluster's driver joins only its own")
        self._join_with_token()
        head = self._start_node(head=True)
        self._wait(lambda: self._gcs_up(), f"the head node (log {head.log})")
        ray.init(address=self.address, log_to_driver=False, logging_level="ERROR")
        head.node_id = ray.get_runtime_context().get_node_id()
        for _ in range(workers):
            self.add_worker()

    def _join_with_token(self) -> None:
        """This process (the driver) authenticates with the cluster's token: Ray reads the auth
        settings when it loads, so they are set and then reloaded."""
        os.environ.update({k: self.env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH",
                                                     "RAY_USAGE_STATS_ENABLED")})
        try:
            from ray._raylet import AuthenticationTokenLoader, Config
        except ImportError:  # a Ray without token authentication: nothing to reload
            return
        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()

    def _gcs_up(self) -> bool:
        import socket

        with socket.socket() as s:
            s.settimeout(0.5)
            return s.connect_ex(("127.0.0.1", self.port)) == 0 and self._session_file().exists()

    def _session_file(self) -> Path:
        return self.root / "ray" / "session_latest"

    def alive_nodes(self) -> set[str]:
        import ray

        return {n["NodeID"] for n in ray.nodes() if n["Alive"]}

    def add_worker(self) -> Node:
        """Start a worker node and wait until Ray counts it alive."""
        before = self.alive_nodes()
        node = self._start_node(head=False)
        self._wait(lambda: self.alive_nodes() - before, f"worker node {len(self.nodes) - 1} (log {node.log})")
        node.node_id = next(iter(self.alive_nodes() - before))
        return node

    def kill(self, node: Node) -> int:
        """SIGKILL every process of ``node`` at once (a machine lost); returns how many there were."""
        count = kill_session(node.sid)
        node.process.wait()
        return count

    def node_dead(self, node: Node) -> bool:
        return node.node_id not in self.alive_nodes()

    def deploy(self, config: dict) -> Path:
        """Write ``config`` (Ray Serve's schema) and ``serve run --non-blocking`` it on the cluster;
        returns when the application runs (every replica up)."""
        from ray import serve

        path = self.root / "serve_config.json"  # JSON is YAML: serve run reads it as its config file
        path.write_text(json.dumps(config, indent=2))
        done = subprocess.run([self._tool("serve"), "run", "--non-blocking", "--address", self.address, str(path)],
                              env=self.env, capture_output=True, text=True, timeout=self.timeout_s)
        if done.returncode != 0:
            raise RuntimeError(f"serve run {path} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")

        def running() -> bool:
            app = serve.status().applications.get(APP_NAME)
            if app is not None and app.status.value in ("DEPLOY_FAILED", "UNHEALTHY"):
                raise RuntimeError(f"the application failed to deploy: {app.message}")
            return app is not None and app.status.value == "RUNNING"

        self._wait(running, f"the application {APP_NAME} to run")
        return path

    def replicas_by_node(self, deployment: str = "renderer") -> dict[str, int]:
        """Running replicas of ``deployment`` per node (its id's first 8 characters; Ray's actor table)."""
        import ray

        counts: dict[str, int] = {}
        for actor in ray._private.state.actors().values():  # GCS's table: no dashboard needed
            if actor["State"] == "ALIVE" and actor["ActorClassName"].endswith(f":{APP_NAME}:{deployment}"):
                node = actor["Address"]["NodeID"][:8]
                counts[node] = counts.get(node, 0) + 1
        return counts

    def _wait(self, ready, what: str) -> None:
        end = time.monotonic() + self.timeout_s
        while not ready():
            for node in self.nodes:
                if node.process.poll() is not None and node.node_id is None:
                    raise RuntimeError(f"{what}: its ray start exited ({node.process.returncode}); see {node.log}")
            if time.monotonic() > end:
                raise TimeoutError(f"{what}: not within {self.timeout_s:g} s")
            time.sleep(0.2)

    def stop(self) -> None:
        """Disconnect, then end every node's session (SIGTERM, SIGKILL after 10 s); Serve goes with them."""
        import ray

        if ray.is_initialized():
            ray.shutdown()
        for node in reversed(self.nodes):
            kill_session(node.sid, signal.SIGTERM, grace=10.0)
            node.process.wait()

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
