"""rockir-serve: the search page, a local web app over a trained model and its saved index.

    rockir-serve --workdir runs/default --index runs/default/eval/index \
        [--metadata <csv>] [--host 127.0.0.1] [--port 8000] [--allowed-host NAME]

Open http://127.0.0.1:8000, drop a slice on the page and see its nearest database images and its
predicted porosity and permeability; the JSON API is ``POST /api/search`` (see
:mod:`rockir_jax.serve.app`). The index (``rockir-evaluate``'s ``<out>/index``) is only accepted from
the same model. It listens on the loopback address unless ``--host`` says otherwise, and answers only
requests addressed to a loopback name or an ``--allowed-host``.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Sequence

from rockir_jax.cli import common
from rockir_jax.retrieval import search
from rockir_jax.serve import app as serve_app

_WILDCARDS = ("0.0.0.0", "::", "")


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def _host_names(host: str, allowed: Sequence[str]) -> list[str]:
    """The ``--allowed-host`` names plus ``--host`` itself when it is a name or address a browser can
    send (not a wildcard address)."""
    names = list(allowed)
    if host not in _WILDCARDS and host not in names:
        names.append(host)
    return names


def main(argv: Sequence[str] | None = None) -> None:
    parser = common.parser("rockir-serve", __doc__.splitlines()[0])
    common.add_model_arguments(parser)
    parser.add_argument("--index", type=common.path, required=True, help="rockir-evaluate's <out>/index")
    parser.add_argument(
        "--metadata", type=common.path, help="metadata CSV: a query's pixel size from its sample"
    )
    parser.add_argument("--perm-unit", default="mD", help="unit of the CSV's Permeability")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")
    parser.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name (or NAME:PORT) the page may be reached by, besides localhost, 127.0.0.1 and "
        "[::1] (repeatable)",
    )
    parser.add_argument(
        "--max-upload-mb", type=float, default=serve_app.MAX_UPLOAD_BYTES / 2**20, help="largest upload"
    )
    parser.add_argument(
        "--max-decoded-mb",
        type=float,
        default=serve_app.MAX_DECODED_BYTES / 2**20,
        help="largest upload once decoded (width × height × bytes a pixel); larger ones get 413",
    )
    parser.add_argument(
        "--max-decodes", type=int, default=serve_app.MAX_DECODES, help="images decoded at once"
    )
    args = parser.parse_args(argv)
    if not _is_loopback(args.host):
        print(
            f"warning: --host {args.host} opens the search page to anyone on the network who can reach "
            "this machine, with no password: they can search, upload images and see the index's images "
            "and metadata. Listen on 127.0.0.1 unless that is what you want; clients must use a name "
            "given with --allowed-host.",
            file=sys.stderr,
            flush=True,
        )

    def body() -> None:
        import uvicorn

        model = common.model_from_arguments(args)
        index = search.open_index(model, args.index)
        print(f"compiling the query programs for {len(index)} images …", flush=True)
        app = serve_app.create_app(
            model,
            index,
            metadata_csv=args.metadata,
            perm_unit=args.perm_unit,
            max_upload_bytes=int(args.max_upload_mb * 2**20),
            max_decoded_bytes=int(args.max_decoded_mb * 2**20),
            max_decodes=args.max_decodes,
            allowed_hosts=_host_names(args.host, args.allowed_host),
        )
        host = f"[{args.host}]" if ":" in args.host else args.host
        print(f"search page: http://{host}:{args.port}/", flush=True)
        log_level = "info" if args.verbose else "warning"  # --verbose: uvicorn's request lines too
        uvicorn.run(app, host=args.host, port=args.port, log_level=log_level)

    common.run(body, verbose=args.verbose)


if __name__ == "__main__":
    main()
