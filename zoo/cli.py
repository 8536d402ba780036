"""The ``unet-zoo`` command. Thin: it parses arguments, calls the library and prints."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from zoo.registry import UnknownModelError, list_models, model_info

__all__ = ["main"]

FLOPS_NOTE = "GFLOPs: one image at the stated input size, 2 FLOPs per multiply-add (convolutions, matmuls)"


def _table(rows: list[list[str]], header: list[str], right: set[int]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def fmt(r: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()

    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)])


def _cmd_models(args: argparse.Namespace) -> int:
    names = list_models(args.pattern)
    if not names:
        print(f"no model matches {args.pattern!r}; registered: {', '.join(list_models())}", file=sys.stderr)
        return 1
    rows = []
    for name in names:
        info = model_info(
            name, in_channels=args.in_channels, num_classes=args.num_classes, input_size=args.size
        )
        rows.append(
            [
                info.name,
                info.family,
                f"{info.params:,}",
                f"{info.input_size}->{info.output_size}",
                f"{info.gflops:.1f}",
                info.padding,
                info.paper,
            ]
        )
    header = ["name", "family", "params", "input->output", "GFLOPs", "padding", "paper"]
    print(_table(rows, header, right={2, 3, 4}))
    print(f"\n{FLOPS_NOTE}; {args.in_channels} input channel(s), {args.num_classes} classes.")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    info = model_info(
        args.name, in_channels=args.in_channels, num_classes=args.num_classes, input_size=args.size
    )
    arguments = ", ".join(f"{k}={v!r}" for k, v in sorted(info.arguments.items()))
    lines = [
        f"{info.name}: {info.summary}",
        f"  family           {info.family}",
        f"  paper            {info.paper}",
        f"  parameters       {info.params:,} "
        f"(in_channels={info.in_channels}, num_classes={info.num_classes})",
        f"  GFLOPs           {info.gflops:.2f} at {info.input_size}x{info.input_size} "
        "(2 FLOPs per multiply-add)",
        f"  padding          {info.padding}",
        f"  input sizes      {info.size_rule}; input multiple {info.input_multiple}, "
        f"minimum {info.min_input_size}",
        f"  size example     {info.input_size}x{info.input_size} -> {info.output_size}x{info.output_size}",
        f"  arguments        {arguments}",
        f"  overrides        {', '.join(info.overrides)}",
        f"  create           zoo.create_model({info.name!r}, in_channels={info.in_channels}, "
        f"num_classes={info.num_classes})",
    ]
    print("\n".join(lines))
    return 0


def _cmd_data_verify(args: argparse.Namespace) -> int:
    from zoo.data.verify import verify_dataset

    report = verify_dataset(args.path, dataset=args.dataset, checksums=args.checksums)
    counts = ", ".join(f"{v} {k}" for k, v in report.counts.items())
    print(f"{report.root}: {report.dataset} ({report.layout}): {counts}")
    for note in report.notes:
        print(f"  note: {note}")
    for path, message in report.problems:
        print(f"  PROBLEM {path}: {message}")
    print(f"{len(report.problems)} problem(s)" if report.problems else "OK: no problems")
    return 1 if report.problems else 0


def _cmd_data_synth(args: argparse.Namespace) -> int:
    from zoo.data.synthetic import write_car_twin, write_em_twin

    if args.name == "isbi2012":
        root = write_em_twin(args.out, count=args.count or 30, seed=args.seed, size=args.size or 512)
    else:
        size = args.size or 480
        root = write_car_twin(
            args.out, count=args.count or 96, seed=args.seed, height=size * 2 // 3, width=size
        )
    print(
        f"wrote a synthetic {args.name} twin to {root} (seed {args.seed}); check it with "
        f"`unet-zoo data verify {root}`"
    )
    return 0


def _size_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--in-channels", type=int, default=1, help="input channels (default 1, as ISBI)")
    p.add_argument("--num-classes", type=int, default=2, help="output classes (default 2)")
    p.add_argument(
        "--size",
        type=int,
        default=None,
        help="input height=width for FLOPs (default: the model's reference size, 572 for unet, else 512; "
        "a size the model does not take is replaced by the nearest it does)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unet-zoo", description="U-Net model zoo and benchmark.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("models", help="table of registered models")
    p.add_argument("pattern", nargs="?", default="*", help="shell wildcard, e.g. 'unet*' (default: all)")
    _size_options(p)
    p.set_defaults(func=_cmd_models)
    p = sub.add_parser("info", help="one model in detail")
    p.add_argument("name")
    _size_options(p)
    p.set_defaults(func=_cmd_info)

    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("verify", help="check a dataset folder against its card; exit 1 on any problem")
    p.add_argument("path")
    p.add_argument("--dataset", choices=["isbi2012", "carvana"], help="default: detected from the layout")
    p.add_argument(
        "--checksums",
        action="store_true",
        help="also compare files with the published checksums on record (real data only)",
    )
    p.set_defaults(func=_cmd_data_verify)
    p = data.add_parser("synth", help="write a synthetic twin in the real on-disk format")
    p.add_argument("name", choices=["isbi2012", "carvana"])
    p.add_argument("out")
    p.add_argument(
        "--count",
        type=int,
        default=None,
        help="isbi2012: labelled slices (and as many test slices), default 30; carvana: images, "
        "16 views per car, default 96",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--size",
        type=int,
        default=None,
        help="isbi2012: slice side (default 512); carvana: image width, height 2/3 of it (default 480)",
    )
    p.set_defaults(func=_cmd_data_synth)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (UnknownModelError, ValueError, TypeError, OSError) as err:
        print(f"unet-zoo: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
