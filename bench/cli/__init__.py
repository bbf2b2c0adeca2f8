"""The ``ptmbench`` command line.  Bad input is one line on stderr and exit code 2 (``--debug`` for the
traceback); nothing is written before the inputs have been checked.

One module per subcommand (``add_parser(sub)`` declares its flags, ``run(args) -> int`` runs it), each over a
:class:`~bench.cli.session.Session` that holds the run context, cache, artifact store and zoo."""

from __future__ import annotations

import argparse
import os
import sys

from bench.cli import analyze, compare, data, export, finetune, perf, plot, purify, run, table, zoo
from bench.cli.common import Parser
from bench.errors import PtmbenchError
from bench.quiet import quiet_libraries

EXIT_USAGE = 2

# in the order `ptmbench --help` lists them
COMMANDS = {"data": data, "zoo": zoo, "finetune": finetune, "run": run, "analyze": analyze, "plot": plot,
            "perf": perf, "compare": compare, "table": table, "export": export, "purify": purify}


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(prog="ptmbench", description="Benchmark task-agnostic backdoors in pre-trained models.")
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    ap.add_argument("--allow-pickle", action="store_true",
                    help="load pickle checkpoints of upstream models, only via torch.load(weights_only=True)")
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=Parser)
    for command in COMMANDS.values():
        command.add_parser(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv or bool(os.environ.get("PTMBENCH_DEBUG"))
    quiet_libraries()
    try:
        if "--allow-pickle" in argv:  # inherited by worker processes; off unless asked for
            os.environ["PTMBENCH_ALLOW_PICKLE"] = "1"
        args = build_parser().parse_args([a for a in argv if a not in ("--debug", "--allow-pickle")])
        return COMMANDS[args.cmd].run(args)
    except PtmbenchError as e:
        if debug:
            raise
        print(f"ptmbench: error: {e}".splitlines()[0], file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115
        return 0
    except KeyboardInterrupt:
        print("ptmbench: interrupted; finished stages are kept — run the same command again to resume",
              file=sys.stderr)
        return 130


__all__ = ["COMMANDS", "EXIT_USAGE", "build_parser", "main"]
