"""Tests for securechat.ciphertext_log, on real files in tmp_path."""

from __future__ import annotations

import base64
import gzip
import json
import logging
import os
import re
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from securechat.storage.ciphertext_log import (
    CiphertextLog,
    LogError,
    LogLocked,
    LogProblem,
    LogRecord,
    log_files,
    read_log,
    rotate_offline,
    rotated_stamps,
)

ROTATED_GZ = re.compile(r"^ciphertext-\d{8}T\d{12}Z\.jsonl\.gz$")
REPO_ROOT = Path(__file__).resolve().parent.parent


def records(items):
    return [i for i in items if isinstance(i, LogRecord)]


def problems(items):
    return [i for i in items if isinstance(i, LogProblem)]


def ids(items):
    return [r.record["id"] for r in records(items)]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def rotated_names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("ciphertext-"))


def msg(i: int, t: int | None = None, pad: int = 40) -> dict:
    rec = {"id": i, "room": "r1", "ct": "A" * pad}
    if t is not None:
        rec["t"] = t
    return rec


# ---------------------------------------------------------------- round trip


def test_append_and_read_round_trip(tmp_path):
    with CiphertextLog(tmp_path / "data") as log:
        log.append({"id": 1, "t": 1_700_000_000_000, "ct": "äöü✓"})
        log.append_line('{"id":2,"t":1700000000001}')
    got = list(read_log(tmp_path / "data"))
    assert problems(got) == []
    assert [r.record for r in got] == [
        {"id": 1, "t": 1_700_000_000_000, "ct": "äöü✓"},
        {"id": 2, "t": 1_700_000_000_001},
    ]
    assert [r.line_no for r in got] == [1, 2]
    assert got[0].raw == '{"id":1,"t":1700000000000,"ct":"äöü✓"}'
    assert got[1].raw == '{"id":2,"t":1700000000001}'
    assert all(r.path == tmp_path / "data" / "ciphertext.jsonl" for r in got)


def test_each_line_is_one_complete_json_object(tmp_path):
    with CiphertextLog(tmp_path) as log:
        for i in range(20):
            log.append({"id": i, "nested": {"a": [1, 2, "x\ny"]}})
        live = log.path
    data = live.read_bytes()
    assert data.endswith(b"\n")
    lines = data.split(b"\n")[:-1]
    assert len(lines) == 20
    for i, line in enumerate(lines):
        obj = json.loads(line)
        assert isinstance(obj, dict) and obj["id"] == i


def test_append_line_rejects_newline_and_closed_log(tmp_path):
    log = CiphertextLog(tmp_path)
    with pytest.raises(ValueError, match="newline"):
        log.append_line('{"a":1}\n')
    log.close()
    with pytest.raises(LogError, match="closed"):
        log.append({"a": 1})
    assert log.path.read_bytes() == b""


# ---------------------------------------------------------- torn and corrupt


def test_torn_last_line_reported_then_new_writer_starts_fresh_line(tmp_path):
    with CiphertextLog(tmp_path) as log:
        log.append(msg(1))
        log.append(msg(2))
        live = log.path
    # Simulate a crash in the middle of writing record 3.
    with open(live, "ab") as f:
        f.write(b'{"id":3,"room":"r1","ct":"AAA')

    got = list(read_log(tmp_path))
    assert ids(got) == [1, 2]
    [problem] = problems(got)
    assert problem.path == live
    assert problem.line_no == 3
    assert "torn" in problem.reason

    with CiphertextLog(tmp_path) as log:
        log.append(msg(4))
    got = list(read_log(tmp_path))
    assert ids(got) == [1, 2, 4]
    [problem] = problems(got)
    assert problem.line_no == 3 and "invalid JSON" in problem.reason
    [rec4] = [r for r in records(got) if r.record["id"] == 4]
    assert rec4.line_no == 4


def test_corrupt_middle_lines_reported_and_skipped(tmp_path):
    live = tmp_path / "ciphertext.jsonl"
    live.write_bytes(
        b'{"id":1}\n'
        b'{"id":2,,}\n'
        b'[1,2,3]\n'
        b'{"id":"\xff\xfe"}\n'
        b'\n'
        b'{"id":6}\n'
    )
    got = list(read_log(tmp_path))
    assert ids(got) == [1, 6]
    reasons = {p.line_no: p.reason for p in problems(got)}
    assert set(reasons) == {2, 3, 4, 5}
    assert reasons[2].startswith("invalid JSON")
    assert reasons[3] == "not a JSON object"
    assert "UTF-8" in reasons[4]
    assert all(p.path == live for p in problems(got))


def test_corrupt_and_truncated_gzip_reported_and_reader_moves_on(tmp_path):
    good = gzip.compress(b'{"id":1}\n{"id":2}\n' * 2000)
    (tmp_path / "ciphertext-20240101T000000000000Z.jsonl.gz").write_bytes(b"not gzip at all")
    (tmp_path / "ciphertext-20240101T000000000001Z.jsonl.gz").write_bytes(good[: len(good) // 2])
    (tmp_path / "ciphertext-20240101T000000000002Z.jsonl.gz").write_bytes(gzip.compress(b'{"id":3}\n'))
    (tmp_path / "ciphertext.jsonl").write_bytes(b'{"id":4}\n')
    got = list(read_log(tmp_path))
    bad = problems(got)
    assert [p.path.name for p in bad] == [
        "ciphertext-20240101T000000000000Z.jsonl.gz",
        "ciphertext-20240101T000000000001Z.jsonl.gz",
    ]
    assert ids(got)[-2:] == [3, 4]


def test_missing_directory_yields_nothing(tmp_path):
    assert list(read_log(tmp_path / "nope")) == []
    assert log_files(tmp_path / "nope") == []


# ------------------------------------------------------------------ rotation


def test_rotate_on_empty_log_returns_none(tmp_path):
    with CiphertextLog(tmp_path) as log:
        assert log.rotate() is None
    assert rotated_names(tmp_path) == []


def test_rotate_gzips_and_returns_final_path(tmp_path):
    with CiphertextLog(tmp_path) as log:
        log.append(msg(1))
        gz = log.rotate()
        log.wait_for_background()
        assert gz is not None and ROTATED_GZ.match(gz.name)
        assert gz.exists()
        assert not gz.with_suffix("").exists()  # plain rotated file removed
        expected = json.dumps(msg(1), separators=(",", ":")) + "\n"
        assert gzip.decompress(gz.read_bytes()) == expected.encode()
        assert log.path.read_bytes() == b""
        log.append(msg(2))
    assert ids(read_log(tmp_path)) == [1, 2]


def test_rotated_ciphertext_shrinks_and_zcat_reads_it(tmp_path):
    # More than one 1 MiB read of random base64, the shape of real ciphertext records.
    records = [{"id": i, "ct": base64.b64encode(os.urandom(3000)).decode()} for i in range(1000)]
    with CiphertextLog(tmp_path, gzip_in_background=False) as log:
        for record in records:
            log.append(record)
        plain = log.path.read_bytes()
        gz = log.rotate()
    assert len(plain) > 3 * 1024 * 1024
    assert len(gz.read_bytes()) < 0.8 * len(plain)  # base64 carries 6 bits per 8-bit byte
    assert subprocess.run(["gzip", "-dc", str(gz)], capture_output=True, check=True).stdout == plain


def test_inline_gzip_is_done_when_rotate_returns(tmp_path):
    with CiphertextLog(tmp_path, gzip_in_background=False) as log:
        log.append(msg(1))
        gz = log.rotate()
        assert gz.exists()
        assert [p.name for p in tmp_path.glob("*.tmp")] == []


def test_automatic_rotation_gzip_and_retention(tmp_path, caplog):
    with CiphertextLog(tmp_path, max_bytes=1024, keep=2) as log:
        for i in range(300):  # ~100 bytes each: about 30 rotations
            log.append(msg(i, pad=70))
            assert log.path.stat().st_size < 1024
        log.wait_for_background()
    # Retention can delete a queued rotated file before its gzip job runs;
    # that must be a quiet skip, not a logged failure.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    names = sorted(os.listdir(tmp_path))
    rotated = [n for n in names if n.startswith("ciphertext-")]
    assert len(rotated) == 2
    assert all(ROTATED_GZ.match(n) for n in rotated)
    assert set(names) == set(rotated) | {"ciphertext.jsonl", "ciphertext.lock"}
    got = list(read_log(tmp_path))
    assert problems(got) == []
    # What is left is the newest tail, contiguous and ending with the last record.
    kept = ids(got)
    assert kept == list(range(300 - len(kept), 300))
    assert len(kept) > 10


def test_chronological_order_across_files(tmp_path):
    with CiphertextLog(tmp_path) as log:
        n = 0
        for _ in range(5):
            for _ in range(7):
                log.append(msg(n))
                n += 1
            log.rotate()
        for _ in range(3):
            log.append(msg(n))
            n += 1
        log.wait_for_background()
    files = log_files(tmp_path)
    assert len(files) == 6
    assert files[-1].name == "ciphertext.jsonl"
    assert [f.name for f in files[:-1]] == sorted(f.name for f in files[:-1])
    assert ids(read_log(tmp_path)) == list(range(n))


def test_rotated_names_stay_increasing_past_existing_names(tmp_path):
    # A file from the "future" (clock stepped back) must still sort first.
    future = tmp_path / "ciphertext-29991231T235959999999Z.jsonl.gz"
    future.write_bytes(gzip.compress(b'{"id":0}\n'))
    with CiphertextLog(tmp_path, keep=100) as log:
        made = []
        for i in range(1, 4):
            log.append(msg(i))
            made.append(log.rotate())
        log.wait_for_background()
    assert [p.name for p in made] == sorted(p.name for p in made)
    assert all(p.name > future.name for p in made)
    assert len(set(made)) == 3
    assert ids(read_log(tmp_path)) == [0, 1, 2, 3]


def test_no_record_lost_or_duplicated_under_concurrent_rotation(tmp_path, caplog):
    threads_n, per_thread, rotations = 4, 500, 40
    log = CiphertextLog(tmp_path, max_bytes=4096, keep=100_000, fsync="never")
    start = threading.Barrier(threads_n + 1)
    errors = []

    def writer(k):
        try:
            start.wait()
            for i in range(per_thread):
                log.append({"id": f"{k}-{i}", "ct": "B" * 30})
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def rotator():
        # Spread the rotations over the whole run so they meet the appends.
        try:
            start.wait()
            for _ in range(rotations):
                log.rotate()
                time.sleep(0.001)
        except Exception as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(threads_n)]
    threads.append(threading.Thread(target=rotator))
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often to widen race windows
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old_interval)
    log.close()
    assert errors == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []

    got = list(read_log(tmp_path))
    assert problems(got) == []
    seen = ids(got)
    expected = {f"{k}-{i}" for k in range(threads_n) for i in range(per_thread)}
    assert len(seen) == len(expected)
    assert set(seen) == expected
    # Each thread's own records keep their order.
    for k in range(threads_n):
        mine = [int(s.split("-")[1]) for s in seen if s.startswith(f"{k}-")]
        assert mine == list(range(per_thread))
    assert len(log_files(tmp_path)) > rotations // 2


# --------------------------------------------------------------- permissions


def test_permissions_private_regardless_of_umask(tmp_path):
    old = os.umask(0o022)
    try:
        directory = tmp_path / "a" / "data"
        with CiphertextLog(directory) as log:
            log.append(msg(1))
            gz = log.rotate()
            log.append(msg(2))
            log.wait_for_background()
            assert mode(directory) == 0o700
            assert mode(log.path) == 0o600
            assert mode(directory / "ciphertext.lock") == 0o600
            assert mode(gz) == 0o600
    finally:
        os.umask(old)


def test_existing_loose_directory_and_file_are_tightened(tmp_path):
    directory = tmp_path / "data"
    directory.mkdir()
    os.chmod(directory, 0o755)
    live = directory / "ciphertext.jsonl"
    live.write_bytes(b'{"id":1}\n')
    os.chmod(live, 0o644)
    with CiphertextLog(directory):
        assert mode(directory) == 0o700
        assert mode(live) == 0o600


# ------------------------------------------------------------------- locking


def test_second_writer_in_same_process_is_locked_out(tmp_path):
    first = CiphertextLog(tmp_path)
    try:
        with pytest.raises(LogLocked) as info:
            CiphertextLog(tmp_path)
        assert isinstance(info.value, LogError)
        assert str(tmp_path) in str(info.value)
        assert "in use by another securechat process" in str(info.value)
        first.append(msg(1))  # the first writer is unaffected
    finally:
        first.close()
    with CiphertextLog(tmp_path) as again:  # released on close
        again.append(msg(2))
    assert ids(read_log(tmp_path)) == [1, 2]


def test_writer_in_another_process_is_locked_out(tmp_path):
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from securechat.storage.ciphertext_log import CiphertextLog, LogLocked
        try:
            CiphertextLog(Path(sys.argv[1]))
        except LogLocked:
            sys.exit(3)
        sys.exit(0)
        """
    )
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))

    def other_process():
        return subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env).returncode

    with CiphertextLog(tmp_path):
        assert other_process() == 3
    assert other_process() == 0


def test_rotate_offline_locked_while_writer_open_then_works(tmp_path):
    log = CiphertextLog(tmp_path)
    log.append(msg(1))
    with pytest.raises(LogLocked):
        rotate_offline(tmp_path, keep=5)
    log.close()

    gz = rotate_offline(tmp_path, keep=5)
    assert gz is not None and gz.exists() and ROTATED_GZ.match(gz.name)
    assert (tmp_path / "ciphertext.jsonl").read_bytes() == b""
    assert ids(read_log(tmp_path)) == [1]
    assert rotate_offline(tmp_path, keep=5) is None
    # The lock is released again.
    CiphertextLog(tmp_path).close()


def test_rotate_offline_applies_retention(tmp_path):
    with CiphertextLog(tmp_path, keep=10) as log:
        for i in range(4):
            log.append(msg(i))
            log.rotate()
        log.append(msg(4))
    rotate_offline(tmp_path, keep=2)
    assert len([n for n in rotated_names(tmp_path)]) == 2
    assert ids(read_log(tmp_path)) == [3, 4]


# ----------------------------------------------------------------- filtering


def test_since_until_filter_on_t_milliseconds(tmp_path):
    with CiphertextLog(tmp_path) as log:
        log.append({"id": 1, "t": 1_000_000})
        log.append({"id": 2, "t": 1_999_999})
        log.append({"id": 3, "t": 2_000_000})
        log.append({"id": 4, "t": 2_500_500})
        log.append({"id": 5, "t": 3_000_000})
        log.append({"id": 6})
        log.append({"id": 7, "t": "2500000"})
        log.append({"id": 8, "t": True})
    assert ids(read_log(tmp_path)) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert ids(read_log(tmp_path, since=2000.0, until=3000.0)) == [3, 4]
    assert ids(read_log(tmp_path, since=2500.5)) == [4, 5]
    assert ids(read_log(tmp_path, until=2000)) == [1, 2]


def test_filter_still_reports_problems(tmp_path):
    (tmp_path / "ciphertext.jsonl").write_bytes(b'{"t":5000}\nnope\n{"t":1000}\n')
    got = list(read_log(tmp_path, since=2))
    assert [r.record for r in records(got)] == [{"t": 5000}]
    assert [p.line_no for p in problems(got)] == [2]


def test_containing_yields_exactly_the_matching_records_with_their_line_numbers(tmp_path, monkeypatch):
    """A scan for a few records (attachment references) reads the same records, at the same
    line numbers, as a full read filtered afterwards: across gzipped and live files, across the
    scanner's megabyte reads, with a bad matching line a problem and other bad lines unread."""
    import securechat.storage.ciphertext_log as ciphertext_log

    monkeypatch.setattr(ciphertext_log, "_SCAN_BYTES", 97)  # lines straddle every read
    with CiphertextLog(tmp_path, max_bytes=4096, fsync="never", gzip_in_background=False) as log:
        for i in range(300):
            rec = msg(i, pad=i % 23)
            if i % 7 == 0:
                rec["attachments"] = [{"id": i}]
            log.append(rec)
    assert log_files(tmp_path)[0].name.endswith(".gz") and len(log_files(tmp_path)) > 3
    with open(tmp_path / "ciphertext.jsonl", "ab") as f:
        f.write(b'not json\n{"attachments": oops}\n{"id": 300, "attachments": []}\n{"attachments": torn')

    everything = list(read_log(tmp_path))
    expected = [(i.path, i.line_no, i.record) for i in records(everything) if '"attachments"' in i.raw]
    got = list(read_log(tmp_path, containing=b'"attachments"'))
    assert [(i.path, i.line_no, i.record) for i in records(got)] == expected
    assert [r["id"] for _, _, r in expected] == list(range(0, 300, 7)) + [300]
    live_problems = [(p.line_no, p.reason) for p in problems(got)]
    assert [reason.split(":")[0] for _, reason in live_problems] == ["invalid JSON", "torn last line (no newline)"]
    full = {(p.line_no, p.reason.split(":")[0]) for p in problems(everything)}
    assert {(n, r.split(":")[0]) for n, r in live_problems} <= full
    assert (live_problems[0][0] - 1, "invalid JSON") in full  # "not json" has no match: unread


def test_containing_must_be_a_needle_of_one_line(tmp_path):
    (tmp_path / "ciphertext.jsonl").write_bytes(b'{"id":1}\n')
    for needle in (b"", b"a\nb"):
        with pytest.raises(ValueError, match="containing must be"):
            list(read_log(tmp_path, containing=needle))


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"fsync": "sometimes"}, "fsync must be one of always, interval, never"),
        ({"fsync": None}, "fsync must be one of"),
        ({"max_bytes": 1023}, "max_bytes must be an integer >= 1024"),
        ({"keep": 0}, "keep must be an integer >= 1"),
        ({"fsync_interval": -1}, "fsync_interval must be a number >= 0"),
    ],
)
def test_invalid_arguments_raise_value_error(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        CiphertextLog(tmp_path / "data", **kwargs)
    # Validation happens before anything touches the disk.
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("policy", ["always", "interval", "never"])
def test_every_fsync_policy_writes_records(tmp_path, policy):
    with CiphertextLog(tmp_path, fsync=policy, fsync_interval=0.0) as log:
        log.append(msg(1))
        log.flush()
        log.append(msg(2))
    assert ids(read_log(tmp_path)) == [1, 2]


# ------------------------------------------------------- crash-safe gzipping


def test_plain_and_gz_of_same_rotation_are_read_once(tmp_path):
    name = "ciphertext-20240101T120000000000Z.jsonl"
    body = b'{"id":1}\n{"id":2}\n'
    (tmp_path / name).write_bytes(body)
    (tmp_path / (name + ".gz")).write_bytes(gzip.compress(body))
    (tmp_path / (name + ".gz.tmp")).write_bytes(b"half a gzip")
    (tmp_path / "ciphertext.jsonl").write_bytes(b'{"id":3}\n')
    assert [p.name for p in log_files(tmp_path)] == [name, "ciphertext.jsonl"]
    got = list(read_log(tmp_path))
    assert problems(got) == []
    assert ids(got) == [1, 2, 3]


def test_writer_start_finishes_interrupted_gzip(tmp_path):
    done = "ciphertext-20240101T120000000000Z.jsonl"
    undone = "ciphertext-20240101T130000000000Z.jsonl"
    (tmp_path / done).write_bytes(b'{"id":1}\n')
    (tmp_path / (done + ".gz")).write_bytes(gzip.compress(b'{"id":1}\n'))
    (tmp_path / undone).write_bytes(b'{"id":2}\n')
    (tmp_path / (undone + ".gz.tmp")).write_bytes(b"half a gzip")
    with CiphertextLog(tmp_path) as log:
        log.wait_for_background()
    assert rotated_names(tmp_path) == [done + ".gz", undone + ".gz"]
    assert ids(read_log(tmp_path)) == [1, 2]


def test_interval_fsync_happens_off_the_appending_thread(tmp_path, monkeypatch):
    """The server appends on its event loop; with fsync="interval" the disk wait is elsewhere."""
    import threading
    import time as _time

    threads = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (threads.append(threading.current_thread().name), real_fsync(fd)))
    with CiphertextLog(tmp_path, fsync="interval", fsync_interval=0.05) as log:
        for i in range(50):
            log.append({"event": "msg", "id": str(i)})
        assert threads == [], "append waited for an fsync"
        deadline = _time.monotonic() + 5
        while not threads and _time.monotonic() < deadline:
            _time.sleep(0.02)
        assert threads and set(threads) == {"ciphertext-fsync"}
    assert [r.record["id"] for r in read_log(tmp_path) if isinstance(r, LogRecord)] == [str(i) for i in range(50)]


# -- the live file deleted or replaced under the writer ----------------------------------------


def test_a_deleted_live_file_is_recreated_with_one_clear_line_and_rotation_still_works(tmp_path, caplog):
    log = CiphertextLog(tmp_path, fsync="never", gzip_in_background=False)
    try:
        log.append({"id": "r1"})
        log.path.unlink()  # an admin's rm, a clean-up script
        with caplog.at_level(logging.WARNING, logger="securechat.storage.ciphertext_log"):
            log.append({"id": "r2"})
            log.append({"id": "r3"})
        # Before, r2 and r3 went into the deleted file: acknowledged, and gone.
        assert ids(read_log(tmp_path)) == ["r2", "r3"]
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 1 and "was deleted while the server was writing it" in lines[0]
        assert mode(log.path) == 0o600
        # Before, this rename of a file that was not there raised FileNotFoundError.
        assert log.rotate() is not None
        log.append({"id": "r4"})
    finally:
        log.close()
    assert ids(read_log(tmp_path)) == ["r2", "r3", "r4"]


def test_a_replaced_live_file_is_followed(tmp_path, caplog):
    log = CiphertextLog(tmp_path, fsync="never", gzip_in_background=False)
    try:
        log.append({"id": "r1"})
        other = tmp_path / "restored.jsonl"
        other.write_text('{"id":"old"}\n')
        os.replace(other, log.path)  # someone put another file in its place
        with caplog.at_level(logging.WARNING, logger="securechat.storage.ciphertext_log"):
            log.append({"id": "r2"})
        assert ids(read_log(tmp_path)) == ["old", "r2"]
        assert [r.getMessage() for r in caplog.records][0].count("was replaced by another file") == 1
        rotated = log.rotate()
        assert rotated is not None
    finally:
        log.close()
    assert ids(read_log(tmp_path)) == ["old", "r2"]


def test_a_failed_write_leaves_no_torn_line(tmp_path):
    """A write that got part of the way (RLIMIT_FSIZE here) is cut back: the file reads clean."""
    script = textwrap.dedent(f"""
        import resource, sys
        sys.path.insert(0, {str(REPO_ROOT)!r})
        from securechat.storage.ciphertext_log import CiphertextLog
        log = CiphertextLog({str(tmp_path)!r}, fsync="never", gzip_in_background=False)
        log.append({{"id": "r1"}})
        size = log.path.stat().st_size
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 10, resource.RLIM_INFINITY))
        try:
            log.append({{"id": "r2", "pad": "x" * 100}})
        except OSError as exc:
            print("refused", exc.errno)
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        log.append({{"id": "r3"}})
        log.close()
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert done.stdout.strip() == "refused 27", done.stderr
    items = list(read_log(tmp_path))
    assert problems(items) == [] and ids(items) == ["r1", "r3"]


@pytest.mark.parametrize("policy", ["interval", "never"])
def test_rotation_leaves_every_fsync_to_the_background(tmp_path, monkeypatch, policy):
    """A rotation on the appending thread (the event loop) only renames and opens: the fsync of
    the rotated file and of the directory run on the maintenance thread, before its gzip."""
    import threading

    calls = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(threading.current_thread().name), real_fsync(fd)))
    appender = threading.current_thread().name
    with CiphertextLog(tmp_path, max_bytes=4096, fsync=policy, fsync_interval=3600) as log:
        for i in range(200):
            log.append({"event": "msg", "id": str(i), "pad": "x" * 100})
        on_loop = [name for name in calls if name == appender]
        log.wait_for_background()
        assert on_loop == [], "a rotation fsynced on the appending thread"
        assert calls and set(calls) <= {"ciphertext-gzip_0"}
        rotated = rotated_stamps(tmp_path)
        assert len(rotated) >= 5
    ids = [r.record["id"] for r in read_log(tmp_path) if isinstance(r, LogRecord)]
    assert ids == [str(i) for i in range(200)][-len(ids):] and len(ids) > 150  # keep=10 pruned the oldest
    assert all(p.suffix == ".gz" or p.name == "ciphertext.jsonl" for p in log_files(tmp_path))


def test_with_fsync_always_a_rotation_is_durable_before_append_returns(tmp_path, monkeypatch):
    import threading

    calls = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(threading.current_thread().name), real_fsync(fd)))
    appender = threading.current_thread().name
    with CiphertextLog(tmp_path, max_bytes=1024, fsync="always") as log:
        for i in range(30):
            log.append({"event": "msg", "id": str(i), "pad": "x" * 100})
            rotated_now = len(rotated_stamps(tmp_path))
        # every append fsynced, and each rotation fsynced the file and its directory, on this thread
        assert calls.count(appender) >= 30 + 2 * rotated_now


def test_the_rotation_thread_keeps_the_servers_priority(tmp_path):
    """The job thread shares the event loop's GIL: at a lower priority than the loop it can be
    kept off the CPU while it holds the GIL, and the loop waits (storage/background.py). Only
    the gzip, in a process of its own, runs at the lowest priority."""
    import threading

    seen = {}
    server_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    with CiphertextLog(tmp_path, max_bytes=1024, fsync="never") as log:
        log._schedule(lambda: seen.update(thread=threading.current_thread().name,
                                          nice=os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
        log.wait_for_background()
    assert seen["thread"].startswith("ciphertext-gzip") and seen["nice"] == server_nice


def test_a_rotated_file_is_gzipped_by_another_process_not_a_thread_of_the_server(tmp_path, monkeypatch):
    """The compression's CPU must not share the event loop's GIL: in this process zlib is not
    used at all (patched to fail), and the .gz still holds exactly the rotated records."""
    from securechat.storage import ciphertext_log

    def no_compression_here(*args, **kwargs):
        raise AssertionError("compressed in the server's process")

    monkeypatch.setattr(ciphertext_log.zlib, "compressobj", no_compression_here)
    records = [{"id": i, "ct": base64.b64encode(os.urandom(3000)).decode()} for i in range(600)]
    with CiphertextLog(tmp_path, gzip_in_background=False) as log:
        for record in records:
            log.append(record)
        plain = log.path.read_bytes()
        gz = log.rotate()
    assert len(plain) > 1024 * 1024 and gz.exists()
    assert gzip.decompress(gz.read_bytes()) == plain
    assert len(gz.read_bytes()) < 0.8 * len(plain)  # Huffman-coded as before
    assert oct(gz.stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in tmp_path.glob("*.tmp")] == []


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="no idle scheduling class on this OS")
def test_the_gzip_process_is_in_the_idle_class_from_its_first_line(tmp_path, monkeypatch):
    """Its interpreter start-up (~10 ms of CPU) must not take turns with the event loop: the
    class is the child's before its own code runs (it does not set it itself)."""
    from securechat.storage import ciphertext_log

    monkeypatch.setattr(ciphertext_log, "_GZIP_CHILD",
                        "import os; os.write(1, b'%d %d' % (os.sched_getscheduler(0), os.nice(0)))")
    with CiphertextLog(tmp_path, gzip_in_background=False) as log:
        log.append(msg(1))
        gz = log.rotate()
    policy, _ = map(int, gz.read_bytes().split())
    assert policy == os.SCHED_IDLE


def test_a_failing_gzip_process_is_an_error_and_keeps_the_rotated_file(tmp_path, monkeypatch):
    from securechat.storage import ciphertext_log

    monkeypatch.setattr(ciphertext_log, "_GZIP_CHILD", "import sys; sys.exit('disk on fire')")
    with pytest.raises(OSError, match="exited with 1: .*disk on fire"):
        ciphertext_log._gzip_file(*_plain_and_targets(tmp_path))
    assert (tmp_path / "plain.log").read_bytes() == b"records\n"


def _plain_and_targets(tmp_path):
    source = tmp_path / "plain.log"
    source.write_bytes(b"records\n")
    return source, tmp_path / "plain.log.gz", tmp_path / "plain.log.gz.tmp"


def test_without_an_interpreter_to_start_the_gzip_runs_in_this_process(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "executable", "")
    with CiphertextLog(tmp_path, gzip_in_background=False) as log:
        log.append(msg(1))
        gz = log.rotate()
    assert gzip.decompress(gz.read_bytes()) == (json.dumps(msg(1), separators=(",", ":")) + "\n").encode()
