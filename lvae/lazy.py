"""Public names of a package loaded from their modules on first use (PEP 562), so that ``import lvae`` and a
script's ``--help`` import no torch until something needs it."""
import importlib


def exports(package, names):
    """``(__getattr__, __dir__)`` for ``package`` (its ``__name__``), whose ``names`` map each public name to the
    module that defines it: a name that is itself a module maps to that module."""
    def getattr_(name):
        if name not in names:
            raise AttributeError(f'module {package!r} has no attribute {name!r}')
        module = importlib.import_module(names[name])
        value = module if names[name] == f'{package}.{name}' else getattr(module, name)
        setattr(importlib.import_module(package), name, value)  # loaded once: later lookups skip this function
        return value

    def dir_():
        return sorted(set(vars(importlib.import_module(package))) | set(names))

    return getattr_, dir_
