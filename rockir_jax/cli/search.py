"""rockir-search: the database images most like one query image, and its predicted metadata.

    rockir-search --workdir runs/default --db <folder or <eval dir>/index> --query <image> \
        [-k 10] [--metadata <csv> | --pixel-size <µm>] [--figure out.png]

A saved index (``rockir-evaluate``'s ``<out>/index``) is loaded, not re-embedded, and only accepted
from the same model; an image folder is embedded on every call. See :mod:`rockir_jax.retrieval.search`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax

from rockir_jax.cli import common
from rockir_jax.data.database import DEFAULT_SPLIT
from rockir_jax.images import read_image
from rockir_jax.retrieval import search
from rockir_jax.retrieval.report import FIGURE_IMAGE_SIZE


def main(argv: Sequence[str] | None = None) -> None:
    parser = common.parser("rockir-search", __doc__.splitlines()[0])
    common.add_model_arguments(parser)
    parser.add_argument(
        "--db", type=common.path, required=True, help="image folder, or a saved index directory"
    )
    parser.add_argument("--query", type=common.path, required=True, help="query image")
    parser.add_argument("-k", type=int, default=10, help="number of hits")
    parser.add_argument("--split", default=DEFAULT_SPLIT, help="split of a split-layout --db folder")
    parser.add_argument(
        "--metadata", type=common.path, help="metadata CSV (the query's and the folder's pixel size)"
    )
    parser.add_argument("--pixel-size", type=float, help="the query's pixel size (overrides --metadata)")
    parser.add_argument("--figure", type=common.path, help="write the 3x3 retrieval figure to this PNG")
    parser.add_argument("--perm-unit", default="mD", help="unit of the CSV's Permeability")
    parser.add_argument("--batch-size", type=int, default=64, help="images per embedding batch")
    args = parser.parse_args(argv)
    if args.k < 1:
        parser.error(f"-k must be at least 1, got {args.k}")

    def body() -> None:
        search.check_pixel_size(args.pixel_size)
        model = common.model_from_arguments(args)
        index = search.open_database(model, args.db, args.metadata, args.split, args.batch_size)
        searcher = search.Searcher(model, index, max_hits=args.k)
        result = search.search_file(searcher, args.query, args.k, args.metadata, args.pixel_size)
        # Ranking is a collective over every process's devices: all rank, then one reports.
        ranking = searcher.ranking(result) if args.figure is not None else None
        if jax.process_index() != 0:
            return
        print(search.report(result, index, model, args.perm_unit))
        if args.figure is not None:
            image = read_image(args.query, FIGURE_IMAGE_SIZE)
            figure = search.write_query_figure(
                args.figure, result, image, searcher, args.perm_unit, ranking=ranking
            )
            print(f"figure: {figure}")

    common.run(body, verbose=args.verbose)


if __name__ == "__main__":
    main()
