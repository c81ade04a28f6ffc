"""Command line: ``python -m pylenet <command>`` (also installed as ``pylenet``)."""
import argparse
import json
import sys


def _cmd_info(args):
    import pylenet

    info = pylenet.build_info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    simd = info["simd"]
    print(f"pylenet {info['version']}")
    print(f"  compiler : {info['compiler']}")
    print(f"  simd     : active {simd['active']}; compiled {', '.join(simd['compiled'])}; "
          f"supported here {', '.join(simd['supported'])}")
    print(f"  threads  : {info['threads']} (of {info['hardware_threads']} hardware threads; "
          f"OpenMP {'on' if info['openmp'] else 'off'})")
    print(f"  cuda     : {'compiled in' if info['cuda'] else 'not compiled in'}")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="pylenet", description="pylenet: small-CNN training runtime")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="show what was built and what is used")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=_cmd_info)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError, RuntimeError, MemoryError) as e:
        print(f"pylenet: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
