"""Safety checks are facts about the descriptor that is read, not about a path: flipping a
spec's symlink between a safe file and an unsafe one never gets the unsafe content loaded
(this got a user's command run as root), and a writable specs dir is refused."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from reconciler.spec.load import load_specs
from tests.security.common import write_spec

SAFE = "name: a\nactions:\n  - {name: x, cmd: [safe]}\n"
UNSAFE = "name: a\nactions:\n  - {name: x, cmd: [pwned]}\n"


def test_symlink_flip_between_safe_and_unsafe_never_loads_the_unsafe_file(
        specs_dir: Path) -> None:
    write_spec(specs_dir, "safe.yml", SAFE)
    # group/other-writable is refused whoever owns it (tests run as root)
    write_spec(specs_dir, "unsafe.yml", UNSAFE, mode=0o666)
    link = specs_dir / "a.yaml"
    link.symlink_to("safe.yml")
    stop = threading.Event()

    def flip() -> None:
        targets = ("unsafe.yml", "safe.yml")
        n = 0
        while not stop.is_set():
            tmp = specs_dir / ".flip"
            tmp.symlink_to(targets[n % 2])
            os.replace(tmp, link)
            n += 1

    flipper = threading.Thread(target=flip)
    flipper.start()
    seen: set[str] = set()
    try:
        for _ in range(1500):
            loaded = load_specs(specs_dir, settle=0)
            service = loaded.services.get("a")
            if service is not None:
                seen.add(service.actions[0].argv[0])
            seen.update("refused" for e in loaded.errors if "writable by group" in e.message)
    finally:
        stop.set()
        flipper.join()
    assert "pwned" not in seen
    assert "safe" in seen  # the race really ran both ways
    assert "refused" in seen


def test_a_specs_dir_writable_by_others_is_refused(specs_dir: Path) -> None:
    write_spec(specs_dir, "a.yaml", SAFE)
    for mode in (0o777, 0o775, 0o1777):
        os.chmod(specs_dir, mode)
        loaded = load_specs(specs_dir)
        assert loaded.services == {} and not loaded.ok
        assert loaded.dir_error is not None
        assert "writable by group or others" in loaded.dir_error
        assert f"chmod go-w {specs_dir}" in loaded.dir_error
    os.chmod(specs_dir, 0o755)
    assert "a" in load_specs(specs_dir).services


def test_a_specs_dir_owned_by_another_user_is_refused(specs_dir: Path) -> None:
    if os.geteuid() != 0:
        return  # only root can give it away; as a user it cannot happen to us
    write_spec(specs_dir, "a.yaml", SAFE)
    os.chown(specs_dir, 65534, 65534)
    loaded = load_specs(specs_dir)
    assert loaded.services == {} and loaded.dir_error and "owned by" in loaded.dir_error


def test_kubernetes_configmap_layout_loads_through_its_links(specs_dir: Path) -> None:
    """`name -> ..data/name`, `..data -> ..<timestamp>/`: read through the links, checked on
    the final target; a swap is seen by the next load."""
    def publish(version: str, text: str, mode: int = 0o644) -> None:
        stamp = specs_dir / f"..2026_12_01_{version}"
        stamp.mkdir()
        write_spec(stamp, "a.yaml", text, mode=mode)
        tmp = specs_dir / "..data_tmp"
        tmp.symlink_to(stamp.name)
        os.replace(tmp, specs_dir / "..data")
        if not (specs_dir / "a.yaml").is_symlink():
            (specs_dir / "a.yaml").symlink_to("..data/a.yaml")

    publish("1", SAFE)
    assert load_specs(specs_dir).services["a"].actions[0].argv == ["safe"]
    publish("2", SAFE.replace("safe", "v2"))
    assert load_specs(specs_dir).services["a"].actions[0].argv == ["v2"]
    publish("3", UNSAFE, mode=0o666)  # the target's own mode counts
    loaded = load_specs(specs_dir)
    assert "a" not in loaded.services
    assert "writable by group or others" in loaded.errors[0].message
