"""Language runners for rank.sandbox: how to start a warm worker for a language inside the sandbox.

`RUNNERS` maps a language name to a Runner. A runner names the interpreter to launch and the argv of its
in-sandbox server, which speaks the framed JSON protocol of rank/sandbox/wire.py on two inherited fds.
Python is built in. A JavaScript runner (node, as MultiPL-E does) would add a `node` server speaking the
same protocol and register itself here as RUNNERS["javascript"].
"""
from __future__ import annotations

import os
import shutil
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

# The in-sandbox server: these modules' sources travel on the command line (the sandbox uid may not be
# able to read this package, e.g. under /root), and BOOT installs them as modules, in this order.
SERVER_MODULES = ("wire", "plan", "tester", "seccomp", "server")
BOOT = """
import sys, types
for name in ("rank", "rank.sandbox"):
    sys.modules[name] = types.ModuleType(name)
    sys.modules[name].__path__ = []
package = sys.modules["rank.sandbox"]
names = %r
for name, source in zip(names, sys.argv[4:]):
    module = types.ModuleType("rank.sandbox." + name)
    module.__file__ = "<rank/sandbox/%%s.py>" %% name
    sys.modules[module.__name__] = module
    setattr(package, name, module)
    exec(compile(source, module.__file__, "exec"), module.__dict__)
sys.modules["rank.sandbox.server"].main(sys.argv[1:4])
""" % (SERVER_MODULES,)


def usable_by_others(path: str) -> bool:
    """True if an unprivileged uid (not owner, no groups) can reach and execute `path`."""
    real = Path(os.path.realpath(path))
    try:
        for parent in reversed(real.parents):
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                return False
        return bool(os.stat(real).st_mode & stat.S_IXOTH)
    except OSError:
        return False


class Runner(Protocol):
    """What rank.sandbox needs to start a warm worker for one language."""
    language: str

    def interpreter(self, configured: str | None, unprivileged: bool) -> str: ...

    def server_argv(self, interpreter: str, fd_in: int, fd_out: int, isolated: bool) -> list[str]: ...

    def prefix(self, interpreter: str) -> str: ...


@dataclass(frozen=True)
class PythonRunner:
    language: str = "python"

    def interpreter(self, configured: str | None, unprivileged: bool) -> str:
        """The interpreter the worker runs. As root the sandbox drops to an unprivileged uid, which must
        be able to execute it (a pyenv under /root is not), so fall back to a system python3."""
        options = [configured] if configured else [sys.executable, "/usr/bin/python3",
                                                   "/usr/local/bin/python3", shutil.which("python3")]
        for path in options:
            if path and os.path.exists(path) and (not unprivileged or usable_by_others(path)):
                return os.path.realpath(path)
        raise RuntimeError(f"no Python interpreter usable by an unprivileged uid among {options}; "
                           "set SandboxConfig.python to one (e.g. /usr/bin/python3)")

    def server_argv(self, interpreter: str, fd_in: int, fd_out: int, isolated: bool) -> list[str]:
        here = Path(__file__).parent
        sources = [(here / f"{name}.py").read_text(encoding="utf-8") for name in SERVER_MODULES]
        mode = "isolated" if isolated else "unsafe"
        return [interpreter, "-I", "-c", BOOT, str(fd_in), str(fd_out), mode, *sources]

    def prefix(self, interpreter: str) -> str:
        """The install tree the interpreter needs (bound read-only into the sandbox)."""
        return str(Path(interpreter).parent.parent)


RUNNERS: dict[str, Runner] = {"python": PythonRunner()}
