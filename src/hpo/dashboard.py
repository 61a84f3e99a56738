"""``python -m hpo.dashboard``: optuna-dashboard on a study storage, with hpo's artifact store.

::

    python -m hpo.dashboard --storage sqlite:///outputs/hpo.db [--host 127.0.0.1] [--port 8080]

The dashboard shows every study of the storage: trials, the sampler's notes (rationale per
trial, diagnosis per study), plots, and the artifacts uploaded by the sweeper
(``metrics.csv``, ``curves.png``, ``summary.json``; see :mod:`hpo.artifacts`). It binds to
127.0.0.1 by default: it has no authentication, so reach it from elsewhere through an SSH tunnel
(``ssh -L 8080:127.0.0.1:8080 login-node``) rather than ``--host 0.0.0.0``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from hpo.artifacts import artifact_dir_for, artifact_store_for
from hpo.errors import ConfigError, HPOError
from hpo.storage import open_storage, redact_url

__all__ = ["main", "serve"]

log = logging.getLogger(__name__)


def serve(storage_url: str, *, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Run optuna-dashboard on ``storage_url`` until interrupted (blocks).

    Args:
        storage_url: A storage URL as accepted by :func:`hpo.storage.open_storage`.
        host: Address to bind.
        port: Port to listen on.

    Raises:
        ConfigError: The storage cannot be opened, or the port is out of range or taken.
    """
    import optuna_dashboard

    from hpo.storage import require_existing

    if not 0 < port < 65536:
        raise ConfigError(f"--port {port} is invalid: use a port number in 1..65535")
    require_existing(storage_url)
    storage = open_storage(storage_url)
    store = artifact_store_for(storage_url)
    where = artifact_dir_for(storage_url)
    print(f"optuna-dashboard for {redact_url(storage_url)} on http://{host}:{port}/ "
          f"(artifacts: {where if where is not None else 'none, in-memory storage'}; "
          "Ctrl-C stops it)", flush=True)
    try:
        optuna_dashboard.run_server(storage, host=host, port=port, artifact_store=store)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc} "
            "(pick another --port or stop what uses it)"
        ) from exc


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hpo.dashboard``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m hpo.dashboard",
        description="Serve optuna-dashboard on a study storage, with the trials' artifacts.",
    )
    parser.add_argument("--storage", required=True,
                        help="storage URL, e.g. sqlite:///outputs/hpo.db")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (8080)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        serve(args.storage, host=args.host, port=args.port)
    except HPOError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
