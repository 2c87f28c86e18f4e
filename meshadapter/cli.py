"""The ``meshadapter`` command line (also ``python -m meshadapter``).

Each sub-command is a function registered with :func:`command`; modules that
need heavy imports import them inside the command, so ``meshadapter --help``
stays fast.  Mesh options are the :class:`~meshadapter.config.MeshConfig`
fields as flags (``--cluster``, ``--peers``, ...), each also readable from
its ``MESHADAPTER_*`` variable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from typing import Any, Callable

from .config import add_cli_arguments, config_kwargs_from_args

Command = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, tuple[Command, Callable[[argparse.ArgumentParser], None], str]] = {}


def command(name: str, help: str, mesh_options: bool = True) -> Callable[[Command], Command]:
    """Register a sub-command. The decorated function may set ``.configure``
    (a function adding its own arguments) before or after decoration."""

    def deco(fn: Command) -> Command:
        def configure(p: argparse.ArgumentParser) -> None:
            if mesh_options:
                add_cli_arguments(p.add_argument_group("mesh options"))
            extra = getattr(fn, "configure", None)
            if extra is not None:
                extra(p)

        _COMMANDS[name] = (fn, configure, help)
        return fn

    return deco


def mesh_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Config keyword arguments given on the command line (unset ones are None)."""
    return config_kwargs_from_args(args)


# -- status ------------------------------------------------------------------
def _status_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.add_argument(
        "--wait",
        type=float,
        default=3.0,
        help="seconds to listen for peers before printing (default 3)",
    )


@command("status", "join the mesh briefly (write-only) and print its nodes")
def status(args: argparse.Namespace) -> int:
    from .manager import AsyncMeshManager

    async def run() -> list[dict[str, Any]]:
        async with AsyncMeshManager(write_only=True, **mesh_kwargs(args)) as mgr:
            await asyncio.sleep(args.wait)  # listening window, not synchronisation
            return [n for n in mgr.nodes() if not n["self"]]

    nodes = asyncio.run(run())
    if args.json:
        print(json.dumps(nodes, indent=2, default=str))
        return 0
    if not nodes:
        print("no peers found")
        return 1
    print(
        f"{'HOST':20} {'NODE':24} {'STATUS':8} {'ENDPOINT':28} {'CLIENTS':>7} {'ROOMS':>6} "
        f"{'UPTIME':>8} {'LAG':>6}"
    )
    # Workers behind a sidecar share its endpoint; group them under it.
    for n in sorted(nodes, key=lambda n: (str(n["meta"].get("host", "")), n["node_id"])):
        host = str(n["meta"].get("host") or "-")
        print(
            f"{host[:20]:20} {n['node_id'][:24]:24} {n['status']:8} {n['endpoint'][:28]:28} "
            f"{n['clients']:>7} {n['rooms']:>6} {n['uptime']:>8.0f} {n['lag']:>6.2f}"
        )
    return 0


status.configure = _status_args  # type: ignore[attr-defined]


# -- keygen ------------------------------------------------------------------
def _keygen_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", help="directory for NAME.key (public) and NAME.key_secret (0600)")
    p.add_argument("--name", default="mesh", help="file name stem (default: mesh)")


@command(
    "keygen", "write a CurveZMQ keypair for the mesh (use with --key-file)", mesh_options=False
)
def keygen(args: argparse.Namespace) -> int:
    from .security import keygen as make_keys
    from .security import load_key_file

    public_path, secret_path = make_keys(args.directory, args.name)
    pub = load_key_file(public_path).public.decode()
    print(f"public key:  {public_path}  ({pub})")
    print(f"secret key:  {secret_path}  (mode 0600: copy it to every node, keep it private)")
    print(f"use: MESHADAPTER_KEY_FILE={secret_path}  (or key_file=...)")
    return 0


keygen.configure = _keygen_args  # type: ignore[attr-defined]


# -- sidecar -------------------------------------------------------------------
def _sidecar_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--socket",
        default="/run/meshadapter/sidecar",
        help="path prefix of the worker sockets (<path>.in/.out/.ctl); workers use "
        "sidecar='ipc://<path>' (default /run/meshadapter/sidecar)",
    )
    p.add_argument(
        "--attach-tcp",
        type=int,
        default=0,
        metavar="PORT",
        help="also accept workers on 127.0.0.1:PORT..PORT+2 (needs a token)",
    )
    p.add_argument(
        "--attach-token",
        default=None,
        help="token workers present over TCP (env MESHADAPTER_SIDECAR_TOKEN); "
        "workers set sidecar='tcp://127.0.0.1:PORT', sidecar_token=...",
    )


@command("sidecar", "join the mesh once for this host; local workers attach over a unix socket")
def sidecar(args: argparse.Namespace) -> int:
    import signal

    from .config import MeshConfig
    from .sidecar import Sidecar

    kwargs = {k: v for k, v in mesh_kwargs(args).items() if k != "sidecar"}
    cfg = MeshConfig.from_env(**kwargs)
    cfg.sidecar = ""
    token = args.attach_token if args.attach_token is not None else cfg.sidecar_token

    async def run() -> None:
        sc = Sidecar(cfg, args.socket, attach_port=args.attach_tcp, attach_token=token)
        await sc.start()
        print(
            f"meshadapter sidecar: workers attach with sidecar='ipc://{args.socket}'; "
            f"mesh endpoint {sc.endpoint}",
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await sc.close()

    asyncio.run(run())
    return 0


sidecar.configure = _sidecar_args  # type: ignore[attr-defined]


# -- check / demo (sticky-free mode, see docs/sticky-free.md) -------------------
def _check_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clients", type=int, default=10, help="Socket.IO clients (default 10)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds of traffic (default 5)")
    p.add_argument(
        "--transport",
        choices=["polling", "websocket", "upgrade", "both"],
        default="both",
        help="polling only, websocket only, polling then upgrade, "
        "or both (half polling-only, half upgrading; default)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _check_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", help="the deployment's URL, e.g. http://lb.example:80")
    _check_common(p)


@command(
    "check",
    "drive real Socket.IO clients through a deployment and report failures",
    mesh_options=False,
)
def check(args: argparse.Namespace) -> int:
    from .check import run_check

    report = run_check(
        args.url, clients=args.clients, duration=args.duration, transport=args.transport
    )
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.text())
    return 0 if report.ok else 1


check.configure = _check_args  # type: ignore[attr-defined]


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nodes", type=int, default=3, help="local nodes (default 3)")
    p.add_argument(
        "--no-sticky-free",
        dest="sticky_free",
        action="store_false",
        help="run the nodes without sticky-free mode (to see the failures)",
    )
    _check_common(p)
    p.set_defaults(clients=6)


@command(
    "demo", "start N local nodes behind a round-robin balancer and check them", mesh_options=False
)
def demo(args: argparse.Namespace) -> int:
    import io

    from .check import run_demo

    buf = io.StringIO() if args.json else None
    report = run_demo(
        nodes=args.nodes,
        clients=args.clients,
        duration=args.duration,
        transport=args.transport,
        sticky_free=args.sticky_free,
        out=buf,
    )
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    return 0 if report.ok else 1


demo.configure = _demo_args  # type: ignore[attr-defined]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshadapter",
        description="Broker-less ZeroMQ mesh for python-socketio servers.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_fn, configure, help_text) in sorted(_COMMANDS.items()):
        configure(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if not args.command:
        parser.print_help()
        return 2
    try:
        return _COMMANDS[args.command][0](args)
    except KeyboardInterrupt:
        return 130
    except (ValueError, OSError) as exc:
        print(f"meshadapter {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
