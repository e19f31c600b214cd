#!/usr/bin/env python3
"""Writes the configuration reference of README.md from strongswan-conf/qkd.opt.

qkd.opt (strongSwan's .opt format, the source of its strongswan.conf(5) man page) is the
one place the settings are documented; src/config/tests.rs checks that every key it reads is in
there, and this script renders it between the README's markers:

    scripts/opt-to-md.py            rewrite the section in README.md
    scripts/opt-to-md.py --check    exit 1 if README.md differs from qkd.opt (cargo test
                                    runs this: tests/docs.rs)
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
OPT = ROOT / "strongswan-conf" / "qkd.opt"
README = ROOT / "README.md"
BEGIN = "<!-- BEGIN generated from strongswan-conf/qkd.opt by scripts/opt-to-md.py: edit qkd.opt, then run the script -->"
END = "<!-- END generated from strongswan-conf/qkd.opt -->"
PREFIX = "charon.plugins.qkd."


def entries(text):
    """(key, default or None for a section, summary, details) in file order."""
    out = []
    for block in re.split(r"\n(?=\S)", text.strip("\n")):
        head, *body = block.split("\n")
        m = re.fullmatch(r"(\S+)\s*(:?=)\s*(.*)|(\S+)\s*\{\}", head.strip())
        if not m:
            raise SystemExit(f"{OPT}: cannot read the entry line {head!r}")
        key = m.group(1) or m.group(4)
        default = None if m.group(4) else m.group(3).strip()
        paragraphs = "\n".join(line.strip() for line in body).strip().split("\n\n")
        summary = " ".join(paragraphs[0].split())
        details = [" ".join(p.split()) for p in paragraphs[1:] if p.strip()]
        out.append((key, default, summary, details))
    return out


def cell(text):
    return text.replace("|", "\\|")


def render(text):
    rows = [BEGIN, "", "| key | default | meaning |", "|---|---|---|"]
    for key, default, summary, details in entries(text):
        name = key[len(PREFIX):] if key.startswith(PREFIX) else key
        if default is None:
            name, default_cell = f"{name} {{ }}", "section"
        else:
            default_cell = f"`{default}`" if default else "—"
        meaning = " ".join([f"**{summary}**"] + details)
        rows.append(f"| `{name}` | {default_cell} | {cell(meaning)} |")
    rows += ["", END]
    return "\n".join(rows)


def main():
    check = sys.argv[1:] == ["--check"]
    readme = README.read_text()
    start, end = readme.find(BEGIN), readme.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"{README}: markers of the generated section not found")
    updated = readme[:start] + render(OPT.read_text()) + readme[end + len(END):]
    if check:
        if updated != readme:
            print(f"{README.name}'s configuration reference differs from {OPT.name}: "
                  "run scripts/opt-to-md.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
