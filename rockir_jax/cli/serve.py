"""rockir-serve: the search page, a local web app over a trained model and its saved index.

    rockir-serve --workdir runs/default --index runs/default/eval/index \
        [--metadata <csv>] [--host 127.0.0.1] [--port 8000]

Open http://127.0.0.1:8000, drop a slice on the page and see its nearest database images and its
predicted porosity and permeability; the JSON API is ``POST /api/search`` (see
:mod:`rockir_jax.serve.app`). The index (``rockir-evaluate``'s ``<out>/index``) is only accepted from
the same model. It listens on the loopback address unless ``--host`` says otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rockir_jax.cli import common
from rockir_jax.retrieval import search
from rockir_jax.serve import app as serve_app


def main(argv: Sequence[str] | None = None) -> None:
    parser = common.parser("rockir-serve", __doc__.splitlines()[0])
    common.add_model_arguments(parser)
    parser.add_argument("--index", type=Path, required=True, help="rockir-evaluate's <out>/index")
    parser.add_argument("--metadata", type=Path, help="metadata CSV: a query's pixel size from its sample")
    parser.add_argument("--perm-unit", default="mD", help="unit of the CSV's Permeability")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")
    parser.add_argument(
        "--max-upload-mb", type=float, default=serve_app.MAX_UPLOAD_BYTES / 2**20, help="largest upload"
    )
    args = parser.parse_args(argv)

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
        )
        print(f"search page: http://{args.host}:{args.port}/", flush=True)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")

    common.run(body)


if __name__ == "__main__":
    main()
