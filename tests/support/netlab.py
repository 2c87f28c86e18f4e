"""Driving ../shared/netlab/netlab.sh from tests: virtual hosts in network namespaces.

Each test module uses its own ``prefix`` and subnet so labs never collide;
:func:`skip_reason` says why a lab cannot be built here (no script, not
root, no ``ip netns``), for a clean ``pytest.skip``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NETLAB = ROOT.parent / "shared" / "netlab" / "netlab.sh"


class Lab:
    """One lab: ``Lab("mxd", "10.78.0")``; ``run("up", "3")``, ``run("down")``."""

    def __init__(self, prefix: str, subnet: str) -> None:
        self.prefix, self.subnet = prefix, subnet
        self.env = {**os.environ, "NETLAB_PREFIX": prefix, "NETLAB_SUBNET": subnet,
                    "NETLAB_QUIET": "1"}

    def run(self, *args: str) -> None:
        subprocess.run(["bash", str(NETLAB), *args], env=self.env, capture_output=True,
                       text=True, check=True, timeout=60)

    def exec_args(self, host: str, *argv: str) -> list[str]:
        """Command line running ``argv`` inside namespace host ``host`` (e.g. "h1")."""
        return ["bash", str(NETLAB), "exec", host, *argv]

    def skip_reason(self) -> str | None:
        if not NETLAB.exists():
            return f"netlab script not found at {NETLAB}"
        if os.geteuid() != 0:
            return "needs root (network namespaces)"
        if shutil.which("ip") is None:
            return "iproute2 'ip' not installed"
        probe = f"{self.prefix}-probe{os.getpid()}"
        r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True,
                           check=False)
        if r.returncode != 0:
            return f"cannot create network namespaces: {r.stderr.strip()}"
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
        return None
