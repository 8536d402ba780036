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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (UnknownModelError, ValueError, TypeError) as err:
        print(f"unet-zoo: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
