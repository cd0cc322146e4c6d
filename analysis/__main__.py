"""`python -m analysis <command> ... --out DIR`: run one analysis and write its report.

Commands: overrouting, sweep, compare, load, ablations, fragility. `python -m analysis
<command> --help` lists each command's options.
"""

from __future__ import annotations

import argparse
import sys

from dasg_moe.checkpoint import CheckpointError

from . import COMMANDS


def main(argv: list[str] | None = None) -> int:
    """Parse `argv`, run the command, print where its report went. Returns the exit status:
    0, or 2 with one `error:` line for a bad checkpoint, task, grid or data folder."""
    parser = argparse.ArgumentParser(prog="python -m analysis", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name, module in COMMANDS.items():
        sub = commands.add_parser(name, help=module.HELP, description=module.__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    args = parser.parse_args(argv)
    try:
        path = args.run(args)
    except (CheckpointError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"report written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
