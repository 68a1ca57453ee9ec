"""The re-check's guard: a snapshot of the objects the checks rely on, taken before any student
code runs in the re-check's server; it names, undoes and fingerprints their replacement.

The server compares a child's digest with its own snapshot's (memory addresses survive ``fork``),
so a replacement made while a check ran zeroes that test whatever the child's own copy says.
"""
from __future__ import annotations

import hashlib
import sys
import types
from array import array

# Modules (and every submodule of the first group) whose functions, classes and modules student
# code must not replace while the checks run.
PROTECTED_PACKAGES = ("course_lib", "torch.nn", "torch.cuda", "torch.utils.flop_counter",
                      "torch.testing", "torch.backends", "torch.autograd", "torch.linalg",
                      "torch.fft", "torch.random", "torch.functional")
PROTECTED_MODULES = ("torch", "builtins", "math", "numbers", "numpy", "warnings", "contextlib",
                     "io", "time", "timeit", "gc", "random", "statistics", "logging", "sys",
                     "os")
PROTECTED_CLASSES = ("torch.Tensor", "torch._C.TensorBase")
# Names the interpreter or IPython rebind on their own while running cells.
_VOLATILE = {"_", "__", "___", "get_ipython", "display", "__IPYTHON__", "exit", "quit",
             "displayhook", "excepthook", "last_type", "last_value", "last_traceback",
             "last_exc", "stdout", "stderr", "stdin", "ps1", "ps2", "modules", "path",
             "path_importer_cache", "meta_path", "path_hooks", "argv", "environ", "flags"}


def _watched(value: object) -> bool:
    """Only objects whose replacement is tampering: functions, classes, modules."""
    return callable(value) or isinstance(value, types.ModuleType)


def _protected_modules() -> dict[str, types.ModuleType]:
    found = {}
    for name, module in list(sys.modules.items()):
        if not isinstance(module, types.ModuleType):
            continue
        if name in PROTECTED_MODULES or any(name == p or name.startswith(p + ".")
                                            for p in PROTECTED_PACKAGES):
            found[name] = module
    return found


def _contents_hash(container: dict | list) -> int:
    """Identities of a dict's values by key, in any order (re-inserting the same objects is no
    replacement), or of a list's items in order."""
    if isinstance(container, dict):
        return hash(frozenset((k, id(v)) for k, v in list(container.items())))
    return hash(tuple(id(v) for v in container))


class Guard:
    """Snapshot of the protected namespaces; reports, undoes and fingerprints replacements."""

    def __init__(self) -> None:
        self.modules = _protected_modules()
        self.namespaces: dict[str, tuple[object, dict]] = {}
        self.code: dict[str, tuple[types.FunctionType, tuple]] = {}
        self.contents: dict[str, tuple[object, object]] = {}
        classes: dict[str, type] = {}
        for name, module in self.modules.items():
            self._take(name, module, vars(module))
            for attr, value in list(vars(module).items()):
                if isinstance(value, type) and getattr(value, "__module__", None) == name:
                    classes[f"{name}.{attr}"] = value
                elif name.startswith("course_lib") and attr != "__builtins__":
                    # (a module's __builtins__ is the builtins module's namespace, watched as
                    # such; IPython's builtin trap adds and removes names there every cell)
                    self._take_course(f"{name}.{attr}", value, name)
        for dotted in PROTECTED_CLASSES:
            module_name, _, cls_name = dotted.rpartition(".")
            cls = getattr(sys.modules.get(module_name), cls_name, None)
            if isinstance(cls, type):
                classes[dotted] = cls
        for key, cls in classes.items():
            self._take(key, cls, vars(cls))
            if key.startswith("course_lib"):
                for attr, value in vars(cls).items():
                    self._take_course(f"{key}.{attr}", value, cls.__module__)
        self.reference = self.digest()  # the snapshot's own digest

    def _take(self, key: str, owner: object, namespace) -> None:
        self.namespaces[key] = (owner, {k: v for k, v in list(namespace.items())
                                        if k not in _VOLATILE and _watched(v)})

    def _take_course(self, key: str, value: object, module_name: str) -> None:
        """course_lib: also the code of its functions and the contents of its dicts (``REFERENCE``)."""
        if isinstance(value, types.FunctionType) and value.__module__ == module_name:
            self.code[key] = (value, (value.__code__, value.__defaults__, value.__kwdefaults__))
        elif isinstance(value, dict):
            self.contents[key] = (value, dict(value))
        elif isinstance(value, list):
            self.contents[key] = (value, list(value))

    # ------------------------------------------------------------------ reading the state
    def _current(self):
        """(key, identity) pairs of everything watched, as it is now."""
        for name, module in self.modules.items():
            yield f"module {name}", id(sys.modules.get(name))
        for key, (owner, saved) in self.namespaces.items():
            current = vars(owner)
            for k in saved:
                yield f"{key}.{k}", id(current.get(k))
            if isinstance(owner, type):  # a method added to a class shadows an inherited one
                for k, v in list(current.items()):
                    if k not in saved and k not in _VOLATILE and _watched(v):
                        yield f"{key}.{k} (added)", id(v)
        for key, (fn, _) in self.code.items():
            yield f"{key} (code)", hash((id(fn.__code__), id(fn.__defaults__),
                                         id(fn.__kwdefaults__)))
        for key, (container, saved) in self.contents.items():
            yield f"{key} (contents)", _contents_hash(container)

    def _saved(self):
        """The same pairs as they were at the snapshot."""
        for name, module in self.modules.items():
            yield f"module {name}", id(module)
        for key, (owner, saved) in self.namespaces.items():
            for k, v in saved.items():
                yield f"{key}.{k}", id(v)
        for key, (fn, (code, defaults, kwdefaults)) in self.code.items():
            yield f"{key} (code)", hash((id(code), id(defaults), id(kwdefaults)))
        for key, (container, saved) in self.contents.items():
            yield f"{key} (contents)", _contents_hash(saved)

    def changes(self) -> list[str]:
        """Dotted names of protected objects replaced since the snapshot."""
        saved = dict(self._saved())
        return [k for k, v in self._current() if saved.get(k) != v]

    def _identities(self) -> array:
        """The identities of everything watched, as it is now, in a fixed order (the same
        objects as :meth:`_current`, without naming them: the digest runs before and after
        every test cell, and naming 30,000 objects costs tenths of a second)."""
        ids = array("Q", [id(sys.modules.get(name)) for name in self.modules])
        for owner, saved in self.namespaces.values():
            get = vars(owner).get
            ids.extend([id(get(k)) for k in saved])
            if isinstance(owner, type):  # a method added to a class shadows an inherited one
                ids.extend([id(v) for k, v in list(vars(owner).items())
                            if k not in saved and k not in _VOLATILE and _watched(v)])
        for fn, _ in self.code.values():
            ids.extend((id(fn.__code__), id(fn.__defaults__), id(fn.__kwdefaults__)))
        for container, _ in self.contents.values():
            ids.append(_contents_hash(container) & 0xFFFFFFFFFFFFFFFF)
        return ids

    def digest(self) -> str:
        """One hash of the current identities: equal to the snapshot's only if nothing watched
        was replaced (compared by the server against its own, untouched, snapshot)."""
        return hashlib.blake2b(self._identities().tobytes(), digest_size=20).hexdigest()

    def restore(self) -> None:
        sys.modules.update(self.modules)
        for key, (owner, saved) in self.namespaces.items():
            current = vars(owner)
            for k, v in saved.items():
                if current.get(k) is not v:
                    try:
                        setattr(owner, k, v)
                    except (AttributeError, TypeError):  # e.g. a C type's read-only slot
                        pass
            if isinstance(owner, type):
                for k in [k for k, v in list(current.items())
                          if k not in saved and k not in _VOLATILE and _watched(v)]:
                    try:
                        delattr(owner, k)
                    except (AttributeError, TypeError):
                        pass
        for fn, (code, defaults, kwdefaults) in self.code.values():
            fn.__code__, fn.__defaults__, fn.__kwdefaults__ = code, defaults, kwdefaults
        for container, saved in self.contents.values():
            if isinstance(container, dict):
                container.clear()
                container.update(saved)
            else:
                container[:] = saved
