"""``ddpm-dashboard``: serve the Streamlit app (``streamlit run``) over an outputs root."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ddpm.paths import default_output_dir

APP = Path(__file__).with_name("app.py")


def streamlit_argv(outputs: Path, host: str, port: int) -> list[str]:
    """The ``streamlit run`` command line for the app.

    Args:
        outputs: the outputs root (runs are listed and launched inside it).
        host: address to listen on.
        port: TCP port.
    """
    server = ["--server.address", host, "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false"]
    # viewer: no Deploy button, no developer menu (the app is a local tool, not a Streamlit project)
    return [sys.executable, "-m", "streamlit", "run", str(APP), *server, "--client.toolbarMode", "viewer", "--", "--outputs", str(outputs)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line of ``ddpm-dashboard``.

    Args:
        argv: the arguments (None: ``sys.argv[1:]``).
    """
    p = argparse.ArgumentParser(prog="ddpm-dashboard", description="Local web app to train, watch, sample and explore ddpm runs.")
    p.add_argument(
        "--outputs",
        type=Path,
        default=Path(default_output_dir()),
        help="outputs root holding the runs (default: $DDPM_OUTPUT_DIR or outputs/)",
    )
    p.add_argument("--port", type=int, default=8501, help="TCP port (default: 8501)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine only)")
    args = p.parse_args(argv)
    if not 1 <= args.port <= 65535:
        p.error(f"--port {args.port}: expected 1..65535")
    if args.outputs.exists() and not args.outputs.is_dir():
        p.error(f"--outputs {args.outputs}: not a directory")
    return args


def main(argv: list[str] | None = None) -> None:
    """Start Streamlit on the app; replaces this process."""
    args = parse_args(argv)
    try:
        import streamlit  # noqa: F401
    except ImportError:
        sys.exit('error: the dashboard needs Streamlit: pip install "ddpm[dashboard]"')
    outputs = args.outputs.expanduser().resolve()
    outputs.mkdir(parents=True, exist_ok=True)
    cmd = streamlit_argv(outputs, args.host, args.port)
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main()
