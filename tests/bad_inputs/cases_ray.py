"""Bad inputs of --ray that are found before a cluster is joined: an address that is not
HOST:PORT, and one where no cluster answers (the rest need a cluster: tests/e2e/test_ray.py)."""

from __future__ import annotations

import socket

from bad_inputs.cases import GOOD, Case, items_file, sweep_argv


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def not_an_address(tmp, pair):
    return sweep_argv(pair, items_file(tmp, [GOOD]), "--ray", "headnode")


def nobody_there(tmp, pair):
    return sweep_argv(pair, items_file(tmp, [GOOD]), "--ray", f"127.0.0.1:{_free_port()}")


CASES = [
    Case("ray-not-an-address", "--ray headnode (no port)", not_an_address, "--ray 'headnode': not HOST:PORT"),
    Case("ray-nobody-there", "--ray at an address where no cluster answers", nobody_there, "no Ray cluster answers there"),
]
