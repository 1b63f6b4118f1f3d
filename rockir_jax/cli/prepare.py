"""rockir-prepare: turn 3-D micro-CT volumes into the data set and metadata CSV training reads.

    rockir-prepare --volumes scans/ --out datasets/my_rocks --voxel-size 2.25 --slices 12 --image-size 128

Volumes: multi-page TIFFs or folders of 2-D TIFFs, ``.raw`` with ``--shape``/``--dtype`` or a sidecar
``<stem>.json``, ``.npy``, HDF5 and NetCDF. Porosity and permeability are computed where the lab CSV
has none. See :mod:`rockir_jax.volumes.volume_dataset`.
"""

from __future__ import annotations

from collections.abc import Sequence

from rockir_jax.cli import common
from rockir_jax.data.layout import METADATA_CSV
from rockir_jax.physics import Segmentation
from rockir_jax.volumes import volume_dataset
from rockir_jax.volumes.readers import RawSpec


def _numbers(text: str, kind: type = float) -> tuple:
    return tuple(kind(part) for part in text.split(","))


def main(argv: Sequence[str] | None = None) -> None:
    """Parses ``argv`` (default: the command line), prepares the volumes and prints the summary."""
    parser = common.parser("rockir-prepare", __doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument(
        "--volumes", type=common.path, nargs="+", required=True, help="volume files or folders of them"
    )
    parser.add_argument("--out", type=common.path, required=True, help="the data set folder to write")
    parser.add_argument("--voxel-size", type=float, help="voxel edge in µm, for volumes without their own")
    parser.add_argument(
        "--lab-csv",
        type=common.path,
        help="lab values: sample name, Porosity, Permeability (mD), Voxelsize (µm), …",
    )
    parser.add_argument("--slices", type=int, default=12, help="slices per volume")
    parser.add_argument("--axes", default="0", help="axes the slices are normal to, e.g. 0 or 0,1,2")
    parser.add_argument("--random-slices", action="store_true", help="random positions (--seed), not even")
    parser.add_argument(
        "--image-size", type=int, help="resize the square slices to this side (default: keep)"
    )
    parser.add_argument("--clip-percentiles", default="0.5,99.5", help="grey window to 8 bits, LOW,HIGH")
    segmentation = parser.add_mutually_exclusive_group()
    segmentation.add_argument("--threshold", type=float, help="grey threshold of pores (default: Otsu)")
    segmentation.add_argument(
        "--pore-label", type=float, help="an already segmented volume: the value of pore voxels"
    )
    parser.add_argument(
        "--pores", choices=("dark", "bright"), default="dark", help="pores below/above threshold"
    )
    parser.add_argument("--flow-size", type=int, default=128, help="side of the permeability sub-volume")
    parser.add_argument(
        "--flow",
        choices=tuple(volume_dataset.FLOW_SOLVERS),
        default="network",
        help="permeability solver: network (snow2 pore network, fast) or lbm (lattice Boltzmann on voxels)",
    )
    parser.add_argument("--shape", help="raw volumes without a sidecar: Z,Y,X")
    parser.add_argument("--dtype", help="raw volumes without a sidecar: numpy dtype, e.g. uint8, <u2")
    parser.add_argument("--dataset", help="HDF5/NetCDF array to read, when a file holds several")
    parser.add_argument("--reservoir", help="Reservoir of volumes without one in the lab CSV")
    parser.add_argument("--split", default="0.7,0.15,0.15", help="train,val,db_test fractions of the samples")
    parser.add_argument(
        "--split-by",
        choices=("sample", "slice"),
        default="sample",
        help="split whole samples (default), or each sample's slices (every sample in every split)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and of random slices")
    args = parser.parse_args(argv)

    def body() -> None:
        if (args.shape is None) != (args.dtype is None):
            raise ValueError("--shape and --dtype go together")
        if args.threshold is not None:
            seg = Segmentation("threshold", args.threshold, args.pores)
        elif args.pore_label is not None:
            seg = Segmentation("label", args.pore_label)
        else:
            seg = Segmentation("otsu", pores=args.pores)
        options = volume_dataset.PrepareOptions(
            slices=args.slices,
            axes=_numbers(args.axes, int),
            flow=args.flow,
            random_slices=args.random_slices,
            seed=args.seed,
            image_size=args.image_size,
            clip_percentiles=_numbers(args.clip_percentiles),
            segmentation=seg,
            flow_size=args.flow_size,
            voxel_size_um=args.voxel_size,
            raw=None if args.shape is None else RawSpec(_numbers(args.shape, int), args.dtype),
            dataset=args.dataset,
            reservoir=args.reservoir,
            split_fractions=_numbers(args.split),
            split_by=args.split_by,
        )
        report = volume_dataset.prepare_dataset(args.volumes, args.out, options, args.lab_csv)
        print(volume_dataset.summary_table(report))
        print(f"wrote {args.out}/{METADATA_CSV}, {volume_dataset.CONTACT_SHEET} and {volume_dataset.RECORD}")

    common.run(body, verbose=args.verbose, uses_jax=args.flow == "lbm")


if __name__ == "__main__":
    main()
