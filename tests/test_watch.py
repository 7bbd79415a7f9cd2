"""SpecWatcher against a real directory and real inotify (no mocks)."""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.watch import SpecWatcher, is_spec_name, is_swap_name
from tests.helpers import wait_for


class Counter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def __call__(self) -> None:
        with self._lock:
            self.count += 1

    def above(self, n: int) -> bool:
        return self.count > n


@pytest.fixture
def calls() -> Counter:
    return Counter()


@pytest.fixture
def watcher(specs_dir: Path, calls: Counter) -> Iterator[SpecWatcher]:
    w = SpecWatcher(specs_dir, calls, heartbeat_ms=100)
    w.start()
    yield w
    w.stop()


def _changed(calls: Counter, before: int, what: str) -> None:
    wait_for(lambda: calls.above(before), message=f"on_change after {what}")


def test_add_edit_delete_each_trigger(specs_dir: Path, calls: Counter,
                                      watcher: SpecWatcher) -> None:
    spec = specs_dir / "web.yaml"
    spec.write_text("name: web\n")
    _changed(calls, 0, "add")
    n = calls.count
    spec.write_text("name: web\ndescription: edited\n")
    _changed(calls, n, "edit")
    n = calls.count
    spec.unlink()
    _changed(calls, n, "delete")
    n = calls.count
    (specs_dir / "db.yml").write_text("name: db\n")
    _changed(calls, n, "add .yml")


def test_atomic_save_triggers(specs_dir: Path, calls: Counter, watcher: SpecWatcher) -> None:
    tmp = specs_dir / ".web.yaml.tmp"
    tmp.write_text("name: web\n")
    os.replace(tmp, specs_dir / "web.yaml")
    _changed(calls, 0, "rename into place")


def _atomic_write(path: Path, text: str) -> None:
    """One rename event, so it cannot be split over two batches (exact counts below)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _watch_is_live(specs_dir: Path, calls: Counter) -> int:
    """A file written right after start() may predate the inotify watch (only spec files are
    caught up then); a reported spec write proves the watch exists. Returns the count."""
    _atomic_write(specs_dir / "probe.yaml", "name: probe\n")
    _changed(calls, 0, "probe write")
    return calls.count


def _ignored(caplog: pytest.LogCaptureFixture, path: Path) -> bool:
    """The watcher logs each batch it ignored, with its paths."""
    return any(r.args and str(path) in r.args[0]  # type: ignore[operator, index]
               for r in caplog.records if r.getMessage().startswith("ignored"))


@pytest.mark.parametrize("name", ["notes.txt", ".web.yaml.swp", "4913", "web.yaml~",
                                  ".#web.yaml", ".hidden.yaml", "web.yaml.bak"])
def test_non_spec_file_causes_nothing(specs_dir: Path, calls: Counter, watcher: SpecWatcher,
                                      caplog: pytest.LogCaptureFixture, name: str) -> None:
    caplog.set_level(logging.DEBUG, logger="reconciler.watch")
    n = _watch_is_live(specs_dir, calls)
    (specs_dir / name).write_text("junk\n")
    # Once the ignored batch is logged, the junk was fully handled, so the YAML write below
    # lands in a later batch and must be the one and only call.
    wait_for(lambda: _ignored(caplog, specs_dir / name), message=f"{name} to be ignored")
    assert calls.count == n
    _atomic_write(specs_dir / "web.yaml", "name: web\n")
    _changed(calls, n, "yaml write")
    assert calls.count == n + 1


def test_subdirectory_files_do_not_count(specs_dir: Path, calls: Counter, watcher: SpecWatcher,
                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="reconciler.watch")
    n = _watch_is_live(specs_dir, calls)
    (specs_dir / "sub").mkdir()
    (specs_dir / "sub" / "x.yaml").write_text("name: x\n")  # not watched (not recursive)
    wait_for(lambda: _ignored(caplog, specs_dir / "sub"), message="sub/ to be ignored")
    assert calls.count == n
    _atomic_write(specs_dir / "web.yaml", "name: web\n")
    _changed(calls, n, "yaml write")
    assert calls.count == n + 1


@pytest.mark.parametrize(("name", "spec"), [
    ("a.yaml", True), ("a.yml", True), (".a.yaml", False), (".a.yaml.swp", False),
    ("4913", False), ("a.yaml~", False), ("a.yaml.orig", False), ("a.json", False)])
def test_spec_name_rule(name: str, spec: bool) -> None:
    assert is_spec_name(name) is spec


def test_dir_renamed_over_is_noticed_and_new_dir_watched(
        specs_dir: Path, calls: Counter, watcher: SpecWatcher, tmp_path: Path) -> None:
    (specs_dir / "old.yaml").write_text("name: old\n")
    _changed(calls, 0, "add")
    n = calls.count
    (specs_dir / "old.yaml").unlink()  # rename(2) may replace an EMPTY directory atomically
    _changed(calls, n, "delete")
    new = tmp_path / "new"
    new.mkdir()
    (new / "web.yaml").write_text("name: web\n")
    n = calls.count
    os.rename(new, specs_dir)  # no moment without a specs dir: exactly one detection
    _changed(calls, n, "dir replaced")
    # Two edits: the first may be caught by the catch-up comparison when the new watch
    # starts; the second can then only come from the new watch itself.
    for i in range(2):
        n = calls.count
        (specs_dir / "web.yaml").write_text(f"name: web\ndescription: v{i}\n")
        _changed(calls, n, f"edit {i} in the new dir")


def test_mv_away_and_mv_in(specs_dir: Path, calls: Counter, watcher: SpecWatcher,
                           tmp_path: Path) -> None:
    new = tmp_path / "new"
    new.mkdir()
    os.rename(specs_dir, tmp_path / "specs.old")
    os.rename(new, specs_dir)
    _changed(calls, 0, "dir replaced")
    # Edits in the OLD dir (same inode the first watch had) must not matter any more, and
    # edits in the new one must keep triggering.
    for i in range(3):
        n = calls.count
        (specs_dir / "web.yaml").write_text(f"name: web\ndescription: v{i}\n")
        _changed(calls, n, f"edit {i} in the new dir")


def test_dir_deleted_then_recreated(specs_dir: Path, calls: Counter,
                                    watcher: SpecWatcher) -> None:
    (specs_dir / "web.yaml").write_text("name: web\n")
    _changed(calls, 0, "add")
    n = calls.count
    shutil.rmtree(specs_dir)
    _changed(calls, n, "dir deleted")
    n = calls.count
    specs_dir.mkdir()
    (specs_dir / "web.yaml").write_text("name: web\n")
    _changed(calls, n, "dir recreated")
    for i in range(2):
        n = calls.count
        (specs_dir / "web.yaml").write_text(f"name: web\ndescription: v{i}\n")
        _changed(calls, n, f"edit {i} in the recreated dir")


def test_symlink_swap_is_a_replacement(tmp_path: Path, calls: Counter) -> None:
    (tmp_path / "v1").mkdir()
    (tmp_path / "v2").mkdir()
    link = tmp_path / "specs"
    link.symlink_to("v1")
    w = SpecWatcher(link, calls, heartbeat_ms=100)
    w.start()
    try:
        (tmp_path / "next").symlink_to("v2")
        os.replace(tmp_path / "next", link)
        _changed(calls, 0, "symlink swapped")
        for i in range(2):
            n = calls.count
            (tmp_path / "v2" / "web.yaml").write_text(f"name: web\ndescription: v{i}\n")
            _changed(calls, n, f"edit {i} behind the new link")
    finally:
        w.stop()


def test_missing_dir_at_start_is_watched_once_created(tmp_path: Path, calls: Counter) -> None:
    specs = tmp_path / "specs"
    w = SpecWatcher(specs, calls, heartbeat_ms=100)
    w.start()
    try:
        specs.mkdir()
        _changed(calls, 0, "dir created")
        n = calls.count
        (specs / "web.yaml").write_text("name: web\n")
        _changed(calls, n, "first file")
    finally:
        w.stop()


def test_callback_errors_do_not_kill_the_thread(specs_dir: Path) -> None:
    seen: list[int] = []

    def flaky() -> None:
        seen.append(1)
        if len(seen) == 1:
            raise RuntimeError("boom")

    w = SpecWatcher(specs_dir, flaky, heartbeat_ms=100)
    w.start()
    try:
        (specs_dir / "a.yaml").write_text("a\n")
        wait_for(lambda: len(seen) >= 1, message="first call")
        (specs_dir / "b.yaml").write_text("b\n")
        wait_for(lambda: len(seen) >= 2, message="second call after the error")
    finally:
        w.stop()


@pytest.mark.parametrize("force_polling", [False, True])
def test_stop_is_prompt(specs_dir: Path, calls: Counter, force_polling: bool) -> None:
    w = SpecWatcher(specs_dir, calls, heartbeat_ms=5000, force_polling=force_polling)
    w.start()
    writes = 0

    def rewrite_until_seen() -> bool:
        # The first write may predate the watch (caught up only at the 5 s heartbeat); keep
        # writing until one is reported, which proves the watch runs in watchfiles now.
        nonlocal writes
        writes += 1
        (specs_dir / "web.yaml").write_text(f"name: web\ndescription: {'x' * writes}\n")
        return calls.count > 0

    wait_for(rewrite_until_seen, message="a write to be seen")
    started = time.monotonic()
    w.stop()
    assert time.monotonic() - started < 1.0
    assert not any(t.name == "spec-watcher" and t.is_alive() for t in threading.enumerate())


def test_stop_is_prompt_while_dir_missing(tmp_path: Path, calls: Counter) -> None:
    w = SpecWatcher(tmp_path / "absent", calls, heartbeat_ms=5000)
    w.start()
    started = time.monotonic()
    w.stop()
    assert time.monotonic() - started < 1.0


# --- directory swaps (Kubernetes ConfigMap AtomicWriter, git-sync) ----------------------------

def _atomic_writer_update(specs_dir: Path, version: int, files: dict[str, str]) -> None:
    """What the kubelet's AtomicWriter does: a new `..<timestamp>` dir with the payload, a
    `..data_tmp` link to it renamed over `..data`, visible names linked through `..data`,
    then the old timestamped dir removed."""
    new = specs_dir / f"..2026_12_0{version}_00_00_00.{version}"
    new.mkdir()
    for name, text in files.items():
        (new / name).write_text(text)
        os.chmod(new / name, 0o644)
    tmp = specs_dir / "..data_tmp"
    tmp.symlink_to(new.name)
    old = os.readlink(specs_dir / "..data") if (specs_dir / "..data").is_symlink() else None
    os.rename(tmp, specs_dir / "..data")
    for name in files:
        if not (specs_dir / name).is_symlink():
            (specs_dir / name).symlink_to(f"..data/{name}")
    if old is not None:
        shutil.rmtree(specs_dir / old)


def test_configmap_atomic_writer_swap_triggers(specs_dir: Path, calls: Counter,
                                               watcher: SpecWatcher) -> None:
    _atomic_writer_update(specs_dir, 1, {"web.yaml": "name: web\n"})
    n = _watch_is_live(specs_dir, calls)
    # only hidden `..` names change now: the visible web.yaml link stays as it is
    _atomic_writer_update(specs_dir, 2, {"web.yaml": "name: web\ndescription: v2\n"})
    wait_for(lambda: calls.above(n), timeout=2.0, message="on_change after a ..data swap")


def test_symlink_flip_triggers(specs_dir: Path, calls: Counter, watcher: SpecWatcher) -> None:
    """git-sync style: a link in the specs dir is atomically pointed at another checkout."""
    for rev in ("rev1", "rev2"):
        (specs_dir / rev).mkdir()
        (specs_dir / rev / "web.yaml").write_text(f"name: web\ndescription: {rev}\n")
    (specs_dir / "current").symlink_to("rev1")
    n = _watch_is_live(specs_dir, calls)
    tmp = specs_dir / "current.tmp"
    tmp.symlink_to("rev2")
    os.rename(tmp, specs_dir / "current")
    wait_for(lambda: calls.above(n), timeout=2.0, message="on_change after a link flip")


def test_swap_names_are_relevant() -> None:
    assert is_swap_name("..data") and is_swap_name("..data_tmp")
    assert is_swap_name("..2026_12_01_00_00_00.1")
    assert not is_swap_name(".web.yaml.swp") and not is_swap_name("web.yaml")


def test_a_file_named_by_also_watch_triggers(specs_dir: Path, calls: Counter,
                                             watcher: SpecWatcher,
                                             caplog: pytest.LogCaptureFixture) -> None:
    """An env file the specs name is part of what runs: editing it must apply at once."""
    caplog.set_level(logging.DEBUG, logger="reconciler.watch")
    n = _watch_is_live(specs_dir, calls)
    (specs_dir / "web.env").write_text("A=1\n")  # not named yet: ignored like any junk
    wait_for(lambda: _ignored(caplog, specs_dir / "web.env"), message="web.env ignored")
    assert calls.count == n
    watcher.also_watch(["web.env"])
    (specs_dir / "web.env").write_text("A=2\n")
    _changed(calls, n, "env file edit")
