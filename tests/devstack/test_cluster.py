"""The local NATS cluster starts even when a port it chose is taken before a node binds it."""

from __future__ import annotations

import socket

import pytest

from devstack.cluster import NatsCluster
from devstack.processes import _port_slice, free_port


def hold(port: int) -> socket.socket:
    """Another program listening on `port`, as may happen between choosing a port and binding it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


def test_a_node_whose_port_was_taken_starts_again_on_new_ports_with_its_peers(tmp_path):
    cluster = NatsCluster(data_dir=tmp_path / "nats", log_dir=tmp_path)
    taken = cluster.nodes[1].cluster_port
    squatter = hold(taken)
    try:
        cluster.start()
        assert cluster.nodes[1].cluster_port != taken
        assert all(node.running for node in cluster.nodes)
        # The routes name the new ports: every node sees both peers.
        for node in cluster.nodes:
            routed = {route["remote_name"] for route in node.monitor("routez")["routes"]}
            assert routed == {peer.name for peer in cluster.nodes if peer is not node}
    finally:
        cluster.stop()
        squatter.close()
    assert "address already in use" in (tmp_path / "nats-n2.log").read_text()


def test_a_start_that_gives_up_leaves_no_node_running(tmp_path):
    cluster = NatsCluster(data_dir=tmp_path / "nats", log_dir=tmp_path)
    squatter = hold(cluster.nodes[2].cluster_port)
    try:
        with pytest.raises(RuntimeError, match="exited with 1"):
            cluster.start(attempts=1)
    finally:
        squatter.close()
    assert not any(node.running for node in cluster.nodes)
    assert all(node.process is None for node in cluster.nodes)


def test_free_ports_are_below_the_range_outgoing_connections_use_and_not_handed_out_twice():
    ports = [free_port() for _ in range(200)]
    with open("/proc/sys/net/ipv4/ip_local_port_range") as ranges:
        ephemeral_floor = int(ranges.read().split()[0])
    assert all(20000 <= port < ephemeral_floor for port in ports)
    assert len(set(ports)) == len(ports)


def test_each_xdist_worker_takes_ports_from_its_own_slice(monkeypatch):
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "4")
    slices = []
    for worker in range(4):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{worker}")
        slices.append(_port_slice())
        low, high = slices[-1]
        assert low <= free_port() < high
    assert all(a[1] <= b[0] for a, b in zip(slices, slices[1:]))  # apart, in order
