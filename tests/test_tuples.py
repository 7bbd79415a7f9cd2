"""reconciler/tuples.py: typing's `NamedTuple` class syntax without importing typing. The
records declared with it must behave as typing's would."""

from __future__ import annotations

import typing

import pytest

from reconciler import tuples


def _declare(base: type) -> type:
    class Point(base):  # type: ignore[misc, valid-type]
        """A point."""

        x: int
        y: int = 2
        label: str = "p"

        @property
        def total(self) -> int:
            return int(self.x + self.y)

        @classmethod
        def origin(cls) -> Point:
            return cls(0, 0)

        def shifted(self, by: int) -> Point:
            return self._replace(x=self.x + by)

    return Point


@pytest.mark.parametrize("base", [tuples.NamedTuple, typing.NamedTuple])
def test_behaves_as_typing_named_tuple(base: type) -> None:
    point = _declare(base)
    p = point(1)
    assert p == (1, 2, "p") and p == point(1, 2, "p") and hash(p) == hash((1, 2, "p"))
    assert repr(p) == "Point(x=1, y=2, label='p')"
    assert point._fields == ("x", "y", "label")
    assert point._field_defaults == {"y": 2, "label": "p"}
    assert p.total == 3 and point.origin() == (0, 0, "p") and p.shifted(2).x == 3
    assert p._asdict() == {"x": 1, "y": 2, "label": "p"}
    assert point.__doc__ == "A point." and point.__module__ == __name__
    assert point.__qualname__.endswith("Point")
    assert isinstance(p, tuple)
    with pytest.raises(AttributeError):
        p.x = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        point()


def test_refuses_what_typing_refuses() -> None:
    with pytest.raises(TypeError, match="Non-default"):
        class Bad(tuples.NamedTuple):
            a: int = 1
            b: int
    with pytest.raises(AttributeError, match="_replace"):
        class Worse(tuples.NamedTuple):
            a: int

            def _replace(self) -> None:  # type: ignore[override]
                pass
