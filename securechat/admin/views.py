"""How the admin commands show things to people: rich tables and aligned lines. No I/O but the
console they are handed, so the CLI decides where output goes and whether it has colour."""

from __future__ import annotations

import datetime as dt

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ..crypto import group_fingerprint
from ..tls import CertStatus
from .dump import COLUMNS

# Fixed widths keep successive chunks of `logs dump` (and `--follow` rows) in one column grid.
_DUMP_WIDTHS = (23, 5, 16, 19, 3, 7, 32)


def local_time(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000).isoformat(sep=" ", timespec="seconds")


def roster_table(roster: dict) -> Table:
    table = Table(title=f"room {roster.get('room', '?')}: {len(roster['participants'])} connected",
                  title_justify="left", box=None, header_style="bold", pad_edge=False)
    table.add_column("username", overflow="fold")
    # Never ellipsised: a fingerprint people cannot read in full is useless to compare.
    table.add_column("fingerprint", min_width=79, no_wrap=True)
    for column in ("connected since", "remote address"):
        table.add_column(column, overflow="fold")
    for person in roster["participants"]:
        # Text, not markup: a username like "[red]x" is someone's name, not a style.
        table.add_row(Text(person["username"]), group_fingerprint(person["fingerprint"]),
                      local_time(person["joined"]), person.get("remote") or "-")
    return table


def dump_table(rows: list[tuple[str, ...]], header: bool) -> Table:
    table = Table(box=None, show_header=header, header_style="bold", pad_edge=False)
    for name, width in zip(COLUMNS, _DUMP_WIDTHS):
        justify = "right" if name in ("to", "bytes") else "left"
        table.add_column(name, width=width, no_wrap=True, overflow="ellipsis", justify=justify)
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    return table


def print_certificate(console: Console, cert: CertStatus, now: dt.datetime | None = None) -> None:
    now = now or dt.datetime.now(dt.timezone.utc)
    days = (cert.not_after - now).days
    console.print(f"certificate  {cert.cert_path}", markup=False)
    console.print(f"subject      {cert.subject}", markup=False)
    console.print(f"names        {', '.join(cert.sans) or '(none)'}", markup=False)
    left = f"{days} days left" if now < cert.not_after else "expired"
    console.print(f"valid        {cert.not_before:%Y-%m-%d %H:%M} to {cert.not_after:%Y-%m-%d %H:%M} UTC ({left})")
    console.print(f"key          {cert.key_type}")
    console.print(f"SHA-256      {cert.fingerprint}", markup=False)
    for warning in cert.warnings:
        console.print(f"[yellow]warning[/yellow]      {escape(warning)}")
