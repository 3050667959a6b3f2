#!/usr/bin/env python3
"""Writes the public-holiday calendars of the packs whose calling windows close (or shorten) on
public holidays: policy-packs/<pack>/holidays.toml, from python-holidays (the PyPI package
`holidays`, https://github.com/vacanza/holidays), at the pinned version below.

    pip install holidays==0.108
    python3 tools/holidays.py                    # writes every calendar for 2026 and 2027
    python3 tools/holidays.py --years 2027 2028  # the yearly refresh (see policy-packs/README.md)
    python3 tools/holidays.py --check            # exit 1 when a committed file differs

The output depends only on the package version, the years and the table below (no clock, no
locale): re-running it reproduces the committed files byte for byte. Only national holidays are
written; what each calendar leaves out (regional holidays) is stated in its `regional` key, a
declared gap. Bumping PINNED is a reviewed change: regenerate, run `domicile packs test`, and
read the diff of the dates."""
import argparse
import os
import sys

PINNED = "0.108"
DEFAULT_YEARS = (2026, 2027)
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "policy-packs")

# pack id -> (ISO country code, confidence of the dates, what the calendar does not include)
CALENDARS = {
    "au": (
        "AU",
        "S",
        "not included: the public holidays of the states and territories (e.g. the King's Birthday, "
        "Labour Day, Easter Saturday and Easter Sunday where declared, Melbourne Cup Day) and the "
        "substitute days they declare when a national holiday falls on a weekend (e.g. Monday 28 "
        "December 2026); the Industry Standard's national public holidays are read as the holidays "
        "python-holidays gives for Australia without a state [U]",
    ),
    "es": (
        "ES",
        "S",
        "not included: the holidays of the autonomous communities and municipalities (e.g. 19 March, "
        "Holy Thursday, Easter Monday, each community's own day, local patron saints), which some "
        "years also replace a national holiday falling on a Sunday; only the holidays common to all "
        "of Spain are listed, so a subject may be called on a holiday of their community [U]",
    ),
    "fr": (
        "FR",
        "S",
        "not included: Alsace-Moselle's Good Friday and 26 December and the overseas departments' "
        "abolition-of-slavery days; a subject there may be called on a local public holiday [U]",
    ),
    "it": (
        "IT",
        "S",
        "not included: local patron-saint days (e.g. 29 June in Rome, 7 December in Milan, 24 June in "
        "Florence and Turin) and South Tyrol's Whit Monday; a subject there may be called on a local "
        "holiday or its eve [U]",
    ),
    "za": (
        "ZA",
        "S",
        "none by region: South Africa's public holidays are national (Public Holidays Act 36 of 1994), "
        "with the Monday after one falling on a Sunday and days declared for elections as "
        "python-holidays lists them; a day declared after the file was generated is missing until it "
        "is regenerated [U]",
    ),
}


def toml_string(text):
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    if any(ord(c) < 0x20 for c in escaped):
        raise ValueError(f"control character in {text!r}")
    return f'"{escaped}"'


def render(pack, country, confidence, regional, years, holidays):
    languages = getattr(holidays.country_holidays(country), "supported_languages", ()) or ()
    language = "en_US" if "en_US" in languages else None
    kwargs = {"years": list(years), "categories": (holidays.PUBLIC,)}
    if language:
        kwargs["language"] = language
    dates = holidays.country_holidays(country, **kwargs)
    call = f'country_holidays("{country}", years={list(years)}, categories=("public",)'
    call += f', language="{language}")' if language else ")"
    years_arg = " ".join(str(y) for y in years)
    lines = [
        f"# Public holidays for the calling windows of the `{pack}` pack. Generated: do not edit by hand.",
        f"# Source: python-holidays {holidays.__version__} (the PyPI package `holidays`), national holidays only.",
        "# Refresh yearly (policy-packs/README.md, \"Public holidays\"):",
        f"#   pip install holidays=={holidays.__version__} && python3 tools/holidays.py --years {years_arg}",
        "# Re-running that command reproduces this file byte for byte. A date in a year not listed",
        "# in `years` is not covered: decisions inside a window reading this calendar are then denied.",
        "",
        "[calendar]",
        f"id = {toml_string(pack)}",
        f"country = {toml_string(country)}",
        f"source = {toml_string(f'python-holidays {holidays.__version__} (PyPI package `holidays`): {call}')}",
        f"generated_by = {toml_string(f'python3 tools/holidays.py --years {years_arg}')}",
        f"years = [{', '.join(str(y) for y in years)}]",
        f"regional = {toml_string(regional)}",
        f"confidence = {toml_string(confidence)}",
        "",
        "[dates]",
    ]
    for day in sorted(dates):
        lines.append(f"{day.isoformat()} = {toml_string(dates[day])}")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--years", type=int, nargs="+", default=list(DEFAULT_YEARS))
    parser.add_argument("--check", action="store_true", help="compare with the files instead of writing them")
    parser.add_argument("--packs", default=ROOT, help="the pack set directory (default: policy-packs/)")
    args = parser.parse_args()
    # This file is named like the package: import the package, not this script.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    sys.modules.pop("holidays", None)
    try:
        import holidays
    except ImportError:
        sys.exit(f"error: the `holidays` package is not installed: pip install holidays=={PINNED}")
    if holidays.__version__ != PINNED:
        sys.exit(
            f"error: holidays {holidays.__version__} is installed, the calendars are pinned to {PINNED}: "
            f"pip install holidays=={PINNED} (or bump PINNED in a reviewed change and regenerate)"
        )
    years = sorted(set(args.years))
    stale = []
    for pack, (country, confidence, regional) in sorted(CALENDARS.items()):
        text = render(pack, country, confidence, regional, years, holidays)
        path = os.path.join(args.packs, pack, "holidays.toml")
        if args.check:
            try:
                with open(path, encoding="utf-8", newline="") as f:
                    current = f.read()
            except FileNotFoundError:
                current = None
            if current != text:
                stale.append(path)
            continue
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        print(f"wrote {os.path.relpath(path)} ({text.count(chr(10)) - 17} holidays, {years[0]}-{years[-1]})")
    if stale:
        print("differs from the generator's output:\n  " + "\n  ".join(stale), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
