"""What the container tests need from this machine, and what they must give back.

Podman, its runtime and network tools come from Debian's packages, installed
when missing (CI starts from a clean machine and runs as root). Running
containers changes the host as a side effect: firewall chains, a forwarding
switch, bridges, mounts, lock and state files under /run, /dev/shm and
/var/lib. The tests record those before they start and put them back after,
even when they fail half-way, then check that nothing is left.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

# podman and its OCI runtime; runc, because crun cannot set up containers on a
# host with mixed cgroup v1/v2 controllers; netavark and aardvark-dns give a
# compose network its DNS (service names); debootstrap makes the base images;
# openssl makes the fake Bot API's certificate.
DEBIAN_PACKAGES = ("podman", "runc", "netavark", "aardvark-dns", "debootstrap", "iptables", "openssl")

# Files and directories podman and its network tools create outside the run's
# own directory, at fixed places whatever the configuration says.
FIXED_PLACES = (
    "/run/containers",  # netavark's and aardvark-dns's state
    "/run/libpod",
    "/run/netns",  # network namespaces (a mount point)
    "/dev/shm/libpod_lock",  # podman's locks
    "/var/lib/containers",  # the image blob cache
    "/var/lib/cni",
    "/etc/containers/networks",
)
SYSCTLS = ("net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding")
FIREWALLS = ("iptables", "ip6tables")


class HostError(Exception):
    """The machine cannot run the container tests; the message says what to do."""


def install_debian_packages(packages: tuple[str, ...] = DEBIAN_PACKAGES) -> list[str]:
    """Install what is missing with apt-get; the packages installed (empty when all were there)."""
    missing = [package for package in packages if not _installed(package)]
    if not missing:
        return []
    if shutil.which("apt-get") is None:
        raise HostError(f"these Debian packages are missing and there is no apt-get to install them: {missing}")
    if os.geteuid() != 0:
        raise HostError(
            f"these Debian packages are missing: {' '.join(missing)}; the container tests run podman "
            f"rootful and install them with apt-get, so run them as root (or: apt-get install {' '.join(missing)})"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", *missing]):
        run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900, check=False)
        if run.returncode != 0:
            raise HostError(f"{' '.join(command)} failed ({run.returncode}):\n{run.stderr[-3000:]}")
    still = [package for package in missing if not _installed(package)]
    if still:
        raise HostError(f"apt-get reported success but these packages are still missing: {still}")
    return missing


def _installed(package: str) -> bool:
    query = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Status}", package], capture_output=True, text=True, check=False
    )
    return query.returncode == 0 and query.stdout.endswith("installed")


@dataclass(frozen=True)
class HostState:
    """The parts of the machine that running containers changes."""

    places: frozenset[str]  # FIXED_PLACES that exist
    mounts: tuple[str, ...]  # mount points, in mount order
    links: frozenset[str]  # network interfaces
    sysctls: tuple[tuple[str, str], ...]
    firewall: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...]], ...]  # (tool, table, chains, rules)

    @classmethod
    def capture(cls) -> HostState:
        return cls(
            places=frozenset(place for place in FIXED_PLACES if os.path.lexists(place)),
            mounts=tuple(_mount_points()),
            links=frozenset(os.listdir("/sys/class/net")),
            sysctls=tuple((name, _read_sysctl(name)) for name in SYSCTLS),
            firewall=tuple(_firewall()),
        )

    def differences(self, other: HostState) -> list[str]:
        """What `other` has that this state did not, or has changed; empty when they match."""
        found = [f"left behind: {place}" for place in sorted(other.places - self.places)]
        found += [f"still mounted: {mount}" for mount in other.mounts if mount not in self.mounts]
        found += [f"network interface left: {link}" for link in sorted(other.links - self.links)]
        found += [
            f"sysctl {name} is {value}, was {dict(self.sysctls).get(name)}"
            for name, value in other.sysctls
            if dict(self.sysctls).get(name) != value
        ]
        before = {(tool, table): (set(chains), set(rules)) for tool, table, chains, rules in self.firewall}
        for tool, table, chains, rules in other.firewall:
            old_chains, old_rules = before.get((tool, table), (set(), set()))
            found += [f"{tool} -t {table}: chain {chain} left" for chain in sorted(set(chains) - old_chains)]
            found += [f"{tool} -t {table}: rule left: {rule}" for rule in sorted(set(rules) - old_rules)]
        return found

    def restore(self) -> list[str]:
        """Undo what was added since this state was captured; the steps that failed."""
        failures: list[str] = []
        now = HostState.capture()
        for mount in reversed(now.mounts):
            if mount not in self.mounts:
                _quietly(failures, ["umount", "--lazy", mount])
        for name, value in self.sysctls:
            if value and _read_sysctl(name) != value:
                try:
                    Path("/proc/sys", name).write_text(value)
                except OSError as exc:
                    failures.append(f"sysctl {name}: {exc}")
        before = {(tool, table): (set(chains), set(rules)) for tool, table, chains, rules in self.firewall}
        for tool, table, chains, rules in now.firewall:
            old_chains, old_rules = before.get((tool, table), (set(), set()))
            new_chains = set(chains) - old_chains
            for rule in rules:
                # New rules in built-in or older chains, one by one (they may jump to new chains).
                if rule not in old_rules and rule.split()[1] not in new_chains:
                    _quietly(failures, [tool, "-t", table, "-D", *shlex.split(rule)[1:]])
            for chain in new_chains:  # new chains: emptied, then removed
                _quietly(failures, [tool, "-t", table, "-F", chain])
            for chain in new_chains:
                _quietly(failures, [tool, "-t", table, "-X", chain])
        for link in sorted(now.links - self.links):
            _quietly(failures, ["ip", "link", "delete", link])
        for place in sorted(now.places - self.places):
            path = Path(place)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            if os.path.lexists(place):
                failures.append(f"could not remove {place}")
        return failures


def _mount_points() -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        return [line.split()[4] for line in mountinfo]


def _read_sysctl(name: str) -> str:
    try:
        return Path("/proc/sys", name).read_text().strip()
    except OSError:
        return ""


def _firewall() -> list[tuple[str, str, tuple[str, ...], tuple[str, ...]]]:
    """Per tool and table, its user chains and its rules, as `iptables-save` writes them."""
    found = []
    for tool in FIREWALLS:
        if shutil.which(f"{tool}-save") is None:
            continue
        saved = subprocess.run([f"{tool}-save"], capture_output=True, text=True, check=False).stdout
        table, chains, rules = "", [], []
        for line in saved.splitlines():
            if line.startswith("*"):
                table, chains, rules = line[1:], [], []
            elif line.startswith(":"):
                name, policy = line[1:].split()[:2]
                if policy == "-":  # a user chain; built-in ones have a policy
                    chains.append(name)
            elif line.startswith("-A "):
                rules.append(line)
            elif line == "COMMIT":
                found.append((tool, table, tuple(chains), tuple(rules)))
    return found


def _quietly(failures: list[str], command: list[str]) -> None:
    run = subprocess.run(command, capture_output=True, text=True, check=False)
    if run.returncode != 0:
        failures.append(f"{' '.join(command)}: {run.stderr.strip()}")
