"""Every subcommand's --help is readable text: argparse %-formats argument help but not descriptions."""
import argparse

from nlanalysis.cli import build_parser


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.update(action.choices)
    return found


def test_every_help_text_renders_without_format_leftovers():
    parser = build_parser()
    subs = _subparsers(parser)
    assert {"extract", "report", "compare-runs", "vit-report"} <= set(subs)
    for name, sub in {"": parser, **subs}.items():
        text = sub.format_help()  # raises on a help string whose %-format is broken
        assert "%%" not in text and "%(" not in text, (name, [line for line in text.splitlines() if "%" in line])
