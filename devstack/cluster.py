"""A JetStream cluster of nats-server processes on loopback, for `make run` and tests.

Each node has its own client, route and monitoring port, its own storage folder
and a configuration file; the nodes find each other through their routes. A node
can be killed, restarted, restarted in lame-duck mode (a rolling upgrade) or cut
off from the others (restarted with a cluster port its peers do not know, so no
route forms, while it keeps serving clients).
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from devstack.processes import end_process, free_port, venv_binary, wait_for_port

log = logging.getLogger(__name__)

CLUSTER_NAME = "balcao"
# nats-server's defaults (2 min lame duck, 10 s grace) suit production; a local
# rolling restart wants seconds.
LAME_DUCK_DURATION = "30s"  # the least nats-server accepts
# The wait between leaving JetStream and closing the clients; nats.py does not act
# on the lame-duck notice, so a longer grace only makes a rolling restart longer.
LAME_DUCK_GRACE = "250ms"


@dataclass(kw_only=True)
class NatsNode:
    name: str
    data_dir: Path
    port: int = field(default_factory=free_port)
    cluster_port: int = field(default_factory=free_port)
    monitor_port: int = field(default_factory=free_port)
    routes: list[str] = field(default_factory=list)
    log_file: Path | None = None
    process: subprocess.Popen | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def route_url(self) -> str:
        return f"nats://127.0.0.1:{self.cluster_port}"

    def config(self, cluster_port: int, routes: list[str]) -> str:
        return json.dumps(
            {
                "server_name": self.name,
                "host": "127.0.0.1",
                "port": self.port,
                "http_port": self.monitor_port,
                "jetstream": {"store_dir": str(self.data_dir)},
                "lame_duck_duration": LAME_DUCK_DURATION,
                "lame_duck_grace_period": LAME_DUCK_GRACE,
                "cluster": {
                    "name": CLUSTER_NAME,
                    "listen": f"127.0.0.1:{cluster_port}",
                    "routes": routes,
                },
            },
            indent=2,
        )

    def start(self, *, isolated: bool = False, timeout: float = 30.0) -> None:
        """Start on the same ports and data; `isolated`: on a cluster port no peer knows, with
        its one route to a port where nothing listens (a clustered JetStream needs a route)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cluster_port, routes = (
            (free_port(), [f"nats://127.0.0.1:{free_port()}"]) if isolated else (self.cluster_port, self.routes)
        )
        config_file = self.data_dir.parent / f"{self.name}.conf"
        config_file.write_text(self.config(cluster_port, routes))
        output = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(
                [venv_binary("nats-server"), "-c", str(config_file)], stdout=output, stderr=subprocess.STDOUT
            )
        finally:
            if not isinstance(output, int):
                output.close()
        wait_for_port(self.port, timeout, self.process)
        log.info(
            "nats node %s listening on 127.0.0.1:%d%s",
            self.name,
            self.port,
            " (cut off from its peers)" if isolated else "",
        )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no lame duck, no goodbye to the peers."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def lame_duck(self, timeout: float = 30.0) -> None:
        """Lame-duck mode (SIGUSR2, as `nats-server --signal ldm=PID`): stop accepting
        clients, hand stream leadership to peers, close clients over LAME_DUCK_DURATION, exit."""
        if self.process is None:
            return
        end_process(self.process, signal.SIGUSR2, timeout)
        self.process = None

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None:
            return
        end_process(self.process, signal.SIGTERM, timeout)
        self.process = None

    def monitor(self, path: str) -> dict:
        """A monitoring endpoint (`varz`, `jsz`, `connz`, `routez`) as JSON."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}/{path}", timeout=5) as response:
            return json.loads(response.read())

    def client_names(self) -> list[str]:
        return [conn.get("name", "") for conn in self.monitor("connz?limit=1024")["connections"]]


@dataclass(kw_only=True)
class NatsCluster:
    """`size` JetStream nodes routed to each other; `urls` is what NATS_URL takes."""

    data_dir: Path
    size: int = 3
    log_dir: Path | None = None
    nodes: list[NatsNode] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.nodes = [
            NatsNode(
                name=f"n{i + 1}",
                data_dir=self.data_dir / f"n{i + 1}",
                log_file=self.log_dir / f"nats-n{i + 1}.log" if self.log_dir else None,
            )
            for i in range(self.size)
        ]
        self._route()

    def _route(self) -> None:
        for node in self.nodes:
            node.routes = [peer.route_url for peer in self.nodes if peer is not node]

    @property
    def urls(self) -> str:
        return ",".join(node.url for node in self.nodes)

    @property
    def url(self) -> str:  # what NatsServer offers, so callers can take either
        return self.urls

    def node(self, name: str) -> NatsNode:
        return next(node for node in self.nodes if node.name == name)

    def start(self, timeout: float = 30.0, attempts: int = 3) -> None:
        """Start every node and wait for the cluster to form.

        A node that exits before the cluster forms most likely found one of its
        ports taken between choosing it and binding it (another program, a busy
        machine): the nodes are stopped and all start again on new ports, as the
        routes name every node's port. No node is left running when it gives up.
        """
        for attempt in range(1, attempts + 1):
            try:
                for node in self.nodes:
                    node.start()
                self.wait_ready(timeout, nodes=self.nodes)
                break
            except RuntimeError as exc:  # a node exited
                self.stop()
                if attempt == attempts:
                    raise
                log.warning("nats cluster start failed (%s); again on new ports", exc)
                for node in self.nodes:
                    node.port, node.cluster_port, node.monitor_port = free_port(), free_port(), free_port()
                self._route()
            except BaseException:
                self.stop()
                raise
        log.info("nats cluster of %d nodes ready: %s", self.size, self.urls)

    def wait_ready(self, timeout: float = 30.0, nodes: list[NatsNode] | None = None) -> None:
        """Until every node of `nodes` (default: those running) sees its running peers' routes and a
        JetStream meta leader; RuntimeError if one of them exits meanwhile."""
        deadline = time.monotonic() + timeout
        watched = list(nodes) if nodes is not None else [node for node in self.nodes if node.running]
        while True:
            try:
                ready = all(self._ready(node) for node in watched)
            except OSError:
                ready = False
            for node in watched:  # after the check: a node gone during it must not pass for ready
                if node.process is None or node.process.poll() is not None:
                    code = None if node.process is None else node.process.returncode
                    raise RuntimeError(f"nats node {node.name} exited with {code}")
            if ready:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"nats cluster not ready after {timeout} s")
            time.sleep(0.1)

    def _ready(self, node: NatsNode) -> bool:
        peers = sum(1 for peer in self.nodes if peer.running and peer is not node)
        routed = {route.get("remote_name") for route in node.monitor("routez").get("routes", [])}
        meta = node.monitor("jsz").get("meta_cluster") or {}
        return len(routed - {None}) >= peers and bool(meta.get("leader"))

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM every node at once, then wait for each: a node shutting down
        waits on its peers' Raft groups, so one after another takes seconds more."""
        stopping = [node for node in self.nodes if node.process is not None]
        for node in stopping:
            if node.process is not None and node.process.poll() is None:
                node.process.send_signal(signal.SIGTERM)
        for node in stopping:
            node.stop(timeout)
