"""How the admin commands show things to people: rich tables and aligned lines. No I/O but the
console they are handed, so the CLI decides where output goes and whether it has colour."""

from __future__ import annotations

import datetime as dt
import json

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ..crypto import group_fingerprint
from ..tls import CertStatus, LocalCA
from .dump import COLUMNS
from .terminal import strip_controls

# Fixed widths keep successive chunks of `logs dump` (and `--follow` rows) in one column grid.
_DUMP_WIDTHS = (23, 5, 16, 19, 3, 9, 32)


def local_time(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000).isoformat(sep=" ", timespec="seconds")


def cell(value) -> Text:
    """A table cell from anything a server sent: text, never markup ("[red]x" is someone's
    name, not a style), never a control character, "-" when missing."""
    if value is None or value == "":
        return Text("-")
    return Text(strip_controls(value if isinstance(value, str) else json.dumps(value)))


def roster_table(roster: dict) -> Table:
    people = roster.get("participants")
    people = [p for p in people if isinstance(p, dict)] if isinstance(people, list) else []
    title = f"room {strip_controls(str(roster.get('room', '?')))}: {len(people)} connected"
    table = Table(title=Text(title), title_justify="left", box=None, header_style="bold", pad_edge=False)
    table.add_column("username", overflow="fold")
    # Never ellipsised: a fingerprint people cannot read in full is useless to compare.
    table.add_column("fingerprint", min_width=79, no_wrap=True)
    for column in ("connected since", "remote address"):
        table.add_column(column, overflow="fold")
    for person in people:
        fingerprint = person.get("fingerprint")
        joined = person.get("joined")
        table.add_row(cell(person.get("username")),
                      cell(group_fingerprint(fingerprint) if isinstance(fingerprint, str) else fingerprint),
                      local_time(joined) if isinstance(joined, int) and not isinstance(joined, bool) else "-",
                      cell(person.get("remote")))
    return table


def roster_tables(answer: dict) -> list[Table]:
    """`securechat roster`: one table per room, in the server's order (the default room first)."""
    people = answer.get("participants")
    people = [p for p in people if isinstance(p, dict)] if isinstance(people, list) else []
    if answer.get("room") is not None:
        return [roster_table({"room": answer["room"], "participants": people})]
    groups: dict[str, list[dict]] = {}
    for person in people:
        groups.setdefault(str(person.get("room", "?")), []).append(person)
    return [roster_table({"room": room, "participants": members}) for room, members in groups.items()]


def duration(seconds: float) -> str:
    """An age for people: "45 s", "12 min", "3 h 5 min", "2 d 4 h"."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def rooms_table(answer: dict) -> Table:
    """`securechat rooms`: the rooms that exist now, with member counts and age."""
    rooms = answer.get("rooms")
    rooms = [r for r in rooms if isinstance(r, dict)] if isinstance(rooms, list) else []
    count = f"{len(rooms)} room{'s' if len(rooms) != 1 else ''} open"
    title = Text(count if rooms else "no rooms are open: nobody is connected")
    table = Table(title=title, title_justify="left", box=None, header_style="bold", pad_edge=False)
    table.add_column("room", overflow="fold")
    table.add_column("people", justify="right")
    table.add_column("age", justify="right")
    table.add_column("open since", overflow="fold")
    for room in rooms:
        name = cell(room.get("name"))
        if room.get("default") is True:
            name.append(" (default)", style="dim")
        members, created, age = room.get("members"), room.get("created"), room.get("age")
        table.add_row(
            name,
            str(members) if isinstance(members, int) and not isinstance(members, bool) else "-",
            duration(age) if isinstance(age, (int, float)) and not isinstance(age, bool) else "-",
            local_time(created) if isinstance(created, int) and not isinstance(created, bool) else "-",
        )
    return table


def dump_table(rows: list[tuple[str, ...]], header: bool) -> Table:
    table = Table(box=None, show_header=header, header_style="bold", pad_edge=False)
    for name, width in zip(COLUMNS, _DUMP_WIDTHS):
        justify = "right" if name in ("to", "bytes") else "left"
        # An attachment's 64-hex blob id folds onto a second line rather than lose half of it.
        overflow = "fold" if name == "message id" else "ellipsis"
        table.add_column(name, width=width, no_wrap=name != "message id", overflow=overflow, justify=justify)
    for row in rows:
        # row() already says "-" for what is missing; "" is a deliberately blank cell (file rows).
        table.add_row(*(Text("") if text == "" else cell(text) for text in row))
    return table


def status_lines(servers: list[dict], runtime_dir) -> list[str]:
    """`securechat status`: a few aligned lines per running server (from its runtime file,
    which only we can write, plus what its status API says)."""
    if not servers:
        return [f"no securechat server is running (runtime dir {runtime_dir})"]
    count = f"{len(servers)} securechat server{'s' if len(servers) != 1 else ''}"
    lines = [f"{count} running (runtime dir {runtime_dir}):"]
    for server in servers:
        live = server.get("status")
        if live:
            people, rooms = live.get("participants"), live.get("rooms")
            # "in lobby" while everyone is in the default room; past that, in how many rooms.
            elsewhere = isinstance(rooms, int) and people != live.get("in_default", people)
            where = f"{rooms} room{'s' if rooms != 1 else ''}" if elsewhere else live.get("room")
            state = f"{people} {'person' if people == 1 else 'people'} in {where}"
        else:
            state = "not answering: " + server.get("problem", "?")
        lines += [
            "",
            f"  port {server['port']}  {server['scheme']}  pid {server['pid']}  version {server['version']}"
            f"  since {local_time(server['started'])}",
            f"    data dir  {server['data_dir']}",
            f"    open      {'  '.join(server['urls'])}",
            f"    now       {strip_controls(state)}",
        ]
        if live and live.get("cluster"):
            lines += cluster_lines(live["cluster"])
    return lines


def cluster_lines(cluster: dict) -> list[str]:
    """The Redis link and one line per process of the cluster, with its own figures."""
    redis = cluster.get("redis")
    if redis != "up":
        since = f" since {local_time(cluster['down_since'])}" if cluster.get("down_since") else ""
        lines = [f"    redis     DOWN{since}: people on other processes cannot be reached"]
    else:
        lines = ["    redis     up"]
    if isinstance(cluster.get("problem"), str):
        lines.append(f"    problem   {strip_controls(cluster['problem'])}")
    for process in cluster.get("processes") or []:
        worker = process.get("worker")
        name = f"worker {worker}" if isinstance(worker, int) and worker >= 0 else "process"
        lines.append(strip_controls(
            f"    {name:<9} pid {process.get('pid')} on {process.get('host')}:{process.get('port')}  "
            f"{process.get('members')} joined  {process.get('connections')} connections  "
            f"{process.get('relayed')} messages relayed"))
    return lines


def cluster_warning(answer: dict) -> str | None:
    """One line for `roster` and `rooms` when the answering process has lost Redis: the people
    it lists on other processes are as they were then."""
    cluster = answer.get("cluster")
    if not isinstance(cluster, dict) or cluster.get("redis") == "up":
        return None
    down = cluster.get("down_since")
    since = f" since {local_time(down)}" if isinstance(down, int) and not isinstance(down, bool) else ""
    return (f"Redis is DOWN{since}: people on other processes are listed as they were then "
            "(they may have left), and messages cannot reach them until it is back")


def print_certificate(console: Console, cert: CertStatus, now: dt.datetime | None = None) -> None:
    now = now or dt.datetime.now(dt.timezone.utc)
    days = (cert.not_after - now).days
    console.print(f"certificate  {cert.cert_path}", markup=False)
    console.print(f"subject      {cert.subject}", markup=False)
    if not cert.self_signed:
        console.print(f"issuer       {cert.issuer}", markup=False)
    console.print(f"names        {', '.join(cert.sans) or '(none)'}", markup=False)
    left = f"{days} days left" if now < cert.not_after else "expired"
    console.print(f"valid        {cert.not_before:%Y-%m-%d %H:%M} to {cert.not_after:%Y-%m-%d %H:%M} UTC ({left})")
    console.print(f"key          {cert.key_type}")
    console.print(f"SHA-256      {cert.fingerprint}", markup=False)
    for warning in cert.warnings:
        console.print(f"[yellow]warning[/yellow]      {escape(warning)}")


def print_ca(console: Console, ca: LocalCA) -> None:
    """The local CA: what devices install, and exactly what its name constraints permit."""
    console.print(f"local CA     {ca.cert_path}", markup=False)
    console.print(f"CA name      {ca.name}", markup=False)
    console.print(f"CA valid     {ca.not_before:%Y-%m-%d} to {ca.not_after:%Y-%m-%d} UTC")
    console.print(f"CA SHA-256   {ca.fingerprint}", markup=False)
    names = ", ".join(ca.permitted_names)
    console.print(f"CA permits   names {names} and the names under them", markup=False)
    console.print(f"             addresses {', '.join(str(n) for n in ca.permitted_networks)}", markup=False)
    console.print("             nothing else: it cannot vouch for a public site", style="dim")


def human_bytes(count: int) -> str:
    """1536 -> "1.5 KiB": the binary units file managers use."""
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _duration(seconds: float) -> str:
    if seconds % 86400 == 0:
        return f"{int(seconds // 86400)} d"
    if seconds % 3600 == 0:
        return f"{int(seconds // 3600)} h"
    return f"{int(seconds // 60)} min" if seconds % 60 == 0 else f"{seconds:g} s"


def print_blob_usage(console: Console, report: dict) -> None:
    """`securechat blobs`: how much the attachments take and what retention will remove."""
    quota = report["quota_bytes"]
    share = f" ({100 * report['bytes'] / quota:.1f} %)" if quota else ""
    days = report["retention_days"]
    console.print(f"attachments in {report['directory']}", markup=False)
    if report.get("enabled") is False:
        console.print("  (turned off: [attachments] max_bytes = 0)", markup=False)
    console.print(f"  stored        {report['count']} blobs, {human_bytes(report['bytes'])} of a "
                  f"{human_bytes(quota)} quota{share}", markup=False)
    console.print(f"  referenced    {report['referenced']['count']} blobs "
                  f"({human_bytes(report['referenced']['bytes'])}) by messages in the kept log", markup=False)
    console.print(f"  unreferenced  {report['unreferenced']['count']} blobs "
                  f"({human_bytes(report['unreferenced']['bytes'])}), deleted once older than "
                  f"{_duration(report['grace_seconds'])}", markup=False)
    oldest = local_time(report["oldest"]) if report["oldest"] is not None else "-"
    retention = f"{days:g} days" if days else "none (kept while the log refers to them)"
    console.print(f"  oldest        {oldest}; age limit {retention}", markup=False)
    uploads = report.get("uploads")
    if uploads and uploads["count"]:
        console.print(f"  uploading     {uploads['count']} ({human_bytes(uploads['reserved_bytes'])} reserved)",
                      markup=False)
    console.print(f"  largest file  {human_bytes(report['max_file_bytes'])}", markup=False)


def prune_summary(result: dict) -> str:
    """One line for `securechat blobs prune`."""
    deleted = result["deleted"]
    expired = sum(1 for d in deleted if d["reason"] == "expired")
    loose = len(deleted) - expired
    verb = "would delete" if result["dry_run"] else "deleted"
    reasons = [part for part in (f"{expired} past the age limit" if expired else "",
                                 f"{loose} no longer referenced" if loose else "") if part]
    why = f": {', '.join(reasons)}" if reasons else ""
    return (f"{verb} {len(deleted)} blobs ({human_bytes(result['freed_bytes'])}){why}; "
            f"{result['kept']} kept")
