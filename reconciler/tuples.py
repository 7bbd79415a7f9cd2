"""`typing.NamedTuple` without importing `typing` (issue 13: `reconcile status`).

`typing` costs more to import than all of `status`'s own work on 200 jobs. The modules on the
status path declare their records as `class X(NamedTuple)` exactly as before; at run time
`NamedTuple` is this class-syntax implementation of typing's own (Python 3.11's
`NamedTupleMeta`, minus generics and the functional form): `collections.namedtuple` with the
annotated fields, their defaults, and the class body's methods, properties and docstring. Type
checkers see typing's (`TYPE_CHECKING` imports), so the declarations are checked as before;
tests/test_tuples.py holds the two to the same behaviour.
"""

import collections

TYPE_CHECKING = False  # not typing's: importing typing is what this module avoids
if TYPE_CHECKING:
    from typing import NamedTuple as NamedTuple
else:
    # what a class body may not set (it would break the tuple), as typing refuses them
    _PROHIBITED = frozenset({"__new__", "__init__", "__slots__", "__getnewargs__", "_fields",
                             "_field_defaults", "_make", "_replace", "_asdict", "_source"})
    _SPECIAL = frozenset({"__module__", "__name__", "__annotations__"})

    class _NamedTupleMeta(type):
        def __new__(cls, typename, bases, ns):
            fields = list(ns.get("__annotations__", {}))
            defaults = []
            for name in fields:
                if name in ns:
                    defaults.append(ns[name])
                elif defaults:
                    raise TypeError(f"Non-default namedtuple field {name} cannot follow "
                                    "default field(s)")
            made = collections.namedtuple(typename, fields, defaults=defaults,
                                          module=ns["__module__"])
            made.__annotations__ = dict(ns.get("__annotations__", {}))
            for key, value in ns.items():
                if key in _PROHIBITED:
                    raise AttributeError("Cannot overwrite NamedTuple attribute " + key)
                if key not in _SPECIAL and key not in made._fields:
                    setattr(made, key, value)
            return made

    def NamedTuple(typename, fields=None, /, **kwargs):
        raise TypeError("reconciler.tuples.NamedTuple supports the class syntax only")

    _NamedTupleBase = type.__new__(_NamedTupleMeta, "NamedTuple", (), {})
    NamedTuple.__mro_entries__ = lambda bases: (_NamedTupleBase,)
