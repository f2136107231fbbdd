"""Turning a job's tests into a plan: compiled steps, the names the candidate supplies, and the calls
known in advance.

Runs in the sandbox server (source shipped by rank/sandbox/runners.py). `ast` is imported inside
functions so that the zygote, forked before any job, stays small.

Which names come from the candidate is decided here, from the job alone (tests, entry point, prompt),
never from the program: the entry point, and the functions the prompt declares without implementing
(a stub whose body is only a docstring, `pass` or `...`). Without an entry point (plain snippets), the
names the snippets read but neither bind nor find among the builtins. Everything else the tests use
(builtins, helpers the prompt implements, their own definitions) is the server's own.
"""
import builtins
import json
import sys

from rank.sandbox.wire import Unsupported, encode, frame

_BUILTIN_NAMES = frozenset(dir(builtins))


def _walk(node):
    """Every node under `node` (itself included), like ast.walk but without its generators: planning
    runs once per new test text and the walks were most of its cost. Order is not ast.walk's."""
    import ast
    AST, out, i = ast.AST, [node], 0
    while i < len(out):
        n = out[i]
        i += 1
        for name in n._fields:
            v = getattr(n, name, None)
            if v.__class__ is list:
                for x in v:
                    if isinstance(x, AST):
                        out.append(x)
            elif isinstance(v, AST):
                out.append(v)
    return out


def _clip(src, n=160):
    src = " ".join(src.split())
    return src if len(src) <= n else src[:n] + "..."


def _free_names(tree):
    """Names a snippet reads but does not bind itself: what it needs from the program or builtins."""
    import ast
    bound, read = set(), set()
    for n in _walk(tree):
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load):
            read.add(n.id)
        else:
            _bind(n, bound)
    return read - bound


def _bind(n, bound):
    """Add to `bound` the names node `n` binds (assignment targets, defs, imports, arguments)."""
    import ast
    if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load):
        bound.add(n.id)
    elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        bound.add(n.name)
    elif isinstance(n, (ast.Import, ast.ImportFrom)):
        bound.update((a.asname or a.name).split(".")[0] for a in n.names)
    elif isinstance(n, ast.arg):
        bound.add(n.arg)


def _is_stub(fn):
    """A prompt's function left for the candidate: its body is only a docstring, `pass` or `...`."""
    import ast
    return all(isinstance(s, ast.Pass) or isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)
               for s in fn.body)


def prompt_parts(prompt, entry):
    """(names the candidate supplies, names the prompt implements, their code or None) for a prompt
    that is Python source; a prompt in prose (SyntaxError) implements nothing and declares nothing."""
    import ast
    if not prompt:
        return set(), set(), None
    try:
        tree = ast.parse(prompt)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return set(), set(), None
    stubs, keep = set(), []
    for s in tree.body:
        if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if s.name == entry or isinstance(s, ast.FunctionDef) and _is_stub(s):
                stubs.add(s.name)
            else:
                keep.append(s)
        elif isinstance(s, (ast.Import, ast.ImportFrom, ast.Assign, ast.AnnAssign)):
            keep.append(s)
    code = compile(ast.Module(keep, []), "<prompt>", "exec") if keep else None
    bound = set()
    for s in keep:
        for n in ([s] if not isinstance(s, (ast.Assign, ast.AnnAssign)) else _walk(s)):
            _bind(n, bound)
    return stubs, bound - stubs, code


class Plan:
    """A job's compiled tests.
    setup:     code run before the tests (the check module, the candidate alias), in order
    tests:     [(label or None, code)]; label None: a step that tests nothing of the candidate
    candidate: names that are proxies to the candidate's functions (decided from the job alone)
    modules:   names the tests read that may be the program's `import <name>` of a standard module
    prompt:    code of what the prompt implements (run in the server), or None
    prefetch:  [(step, framed call)] in evaluation order (step 0 = setup, i + 1 = test i), or None
               when the calls cannot be known from the source alone."""

    def __init__(self, setup, tests, candidate, modules=frozenset(), prompt=None, prefetch=None):
        self.setup, self.tests, self.candidate, self.modules = setup, tests, candidate, modules
        self.prompt, self.prefetch = prompt, prefetch


_PLANS = {}


def plan_tests(job):
    """plan_tests_uncached, memoised by test text: RRTF runs many candidates against the same tests."""
    key = (json.dumps(job.get("tests")), job.get("test"), job.get("entry_point"), job.get("prompt"))
    if key not in _PLANS:
        if len(_PLANS) >= 256:
            _PLANS.clear()
        _PLANS[key] = plan_tests_uncached(job)
    return _PLANS[key]


class _NoPrefetch(Exception):
    pass


def _planned_calls(steps, candidate, alias=None, entry=None):
    """[(step, framed request)] for the calls these steps make to the candidate, in evaluation order;
    raises _NoPrefetch unless every such call is made unconditionally with literal arguments, so that
    a step that completes makes exactly these calls (only an exception can cut a step short).
    `steps`: [(step number, [statements])]; `alias`: the check's parameter name for `entry`."""
    import ast
    AST = ast.AST
    names = set(candidate) | ({alias} if alias else set())
    # nodes whose children are evaluated once, in field order, whenever the node is
    plain = (ast.Expr, ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Assert, ast.Call, ast.BinOp,
             ast.UnaryOp, ast.Subscript, ast.Attribute, ast.Tuple, ast.List, ast.Set, ast.keyword,
             ast.JoinedStr, ast.FormattedValue, ast.Slice, ast.Constant, ast.Name, ast.Load, ast.Store,
             ast.operator, ast.unaryop, ast.cmpop, ast.Import, ast.ImportFrom, ast.alias, ast.Pass)
    calls = []

    def touches(node):
        return any(isinstance(n, ast.Name) and n.id in names for n in _walk(node))

    def visit(node, step):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in names:
            if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
                raise _NoPrefetch()
            try:
                args = [ast.literal_eval(a) for a in node.args]
                kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                raise _NoPrefetch() from None
            name = entry if node.func.id == alias else node.func.id
            request = frame(["call", name, encode(args), encode(kwargs)])
            if b'{"s":' in request or b'{"f":' in request:
                raise _NoPrefetch()             # a set's order on the wire may differ from the test's own
            calls.append((step, request))
            return
        if isinstance(node, ast.Name) and node.id in names:
            raise _NoPrefetch()                             # a candidate function used as a value
        if isinstance(node, ast.Compare) and len(node.ops) == 1:
            pass                                            # a chain (a < b < c) short-circuits
        elif not isinstance(node, plain):
            if touches(node):                               # conditional, repeated or deferred
                raise _NoPrefetch()
            return
        if isinstance(node, ast.Assert):
            if node.msg is not None and touches(node.msg):  # runs only if the assert fails
                raise _NoPrefetch()
            visit(node.test, step)
            return
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(touches(t) for t in targets):            # evaluated after the value
                raise _NoPrefetch()
            if node.value is not None:
                visit(node.value, step)
            return
        for field in node._fields:
            value = getattr(node, field, None)
            if isinstance(value, AST):
                visit(value, step)
            elif isinstance(value, list):
                for item in value:
                    if isinstance(item, AST):
                        visit(item, step)

    try:
        for step, statements in steps:
            for stmt in statements:
                visit(stmt, step)
    except (RecursionError, Unsupported):
        raise _NoPrefetch() from None
    if not calls or sum(len(c) for _, c in calls) > 32768:     # must fit the pipe without blocking
        raise _NoPrefetch()
    return calls


def _prefetch(steps, candidate, alias=None, entry=None):
    try:
        return _planned_calls(steps, candidate, alias, entry)
    except _NoPrefetch:
        return None


def _modules(free):
    """Free names that are top-level standard modules: the program's `import math` may supply them."""
    return frozenset(n for n in free if n in sys.stdlib_module_names)


def plan_tests_uncached(job):
    """The Plan of a job. Splits a check(candidate) into its top-level asserts when its body is
    straight-line code; label None marks a step kept in order that tests nothing of the candidate."""
    import ast       # not at module level: the zygote stays smaller
    entry = job.get("entry_point")
    stubs, implemented, prompt = prompt_parts(job.get("prompt"), entry)
    if job.get("tests") is not None:
        trees = [ast.parse(src) for src in job["tests"]]
        free = [_free_names(tree) for tree in trees]
        every = set().union(*free) - _BUILTIN_NAMES
        candidate = ({entry} | stubs) if entry else every - implemented - _modules(every)
        candidate = frozenset(candidate)
        # a snippet that touches no candidate function (`assert True`, "") tests nothing: run, not counted
        tests = [(f"test {i} ({_clip(src)})" if free[i] & candidate else None, compile(tree, f"<test {i}>", "exec"))
                 for i, (src, tree) in enumerate(zip(job["tests"], trees))]
        steps = [(i + 1, tree.body) for i, tree in enumerate(trees)]
        return Plan([], tests, candidate, _modules(every), prompt, _prefetch(steps, candidate))
    source = job["test"]
    module = ast.parse(source)
    setup = [compile(module, "<test>", "exec")]
    check = next((s for s in module.body if isinstance(s, ast.FunctionDef) and s.name == "check"), None)
    if check is None:
        raise ValueError("the test source defines no check() function")
    candidate = frozenset({entry} | stubs)
    modules = _modules(_free_names(module) - _BUILTIN_NAMES)
    params = [a.arg for a in check.args.args]
    refs = candidate | set(params[:1])
    others = [s for s in module.body if s is not check]
    walks = {id(s): _walk(s) for s in check.body}
    names = {id(s): {n.id for n in walks[id(s)] if type(n) is ast.Name} for s in check.body}
    body = [s for s in check.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    simple = (ast.Assert, ast.Assign, ast.AnnAssign, ast.AugAssign, ast.Import, ast.ImportFrom, ast.Pass, ast.Expr)
    splittable = len(params) == 1 and all(isinstance(s, simple) for s in body) and not any(
        names[id(s)] & refs for s in body if not isinstance(s, ast.Assert))
    if not splittable:
        touches = any(names[id(s)] & refs for s in check.body)
        tests = [("check" if touches else None, compile(f"check({entry})", "<check>", "exec"))]
        return Plan(setup, tests, candidate, modules, prompt)
    lines = source.splitlines()
    if params[0] != entry:
        setup.append(compile(f"{params[0]} = {entry}", "<test>", "exec"))
    tests = []
    for s in body:
        code = compile(ast.Module([s], []), "<test>", "exec")
        if isinstance(s, ast.Assert) and names[id(s)] & refs:
            text = " ".join(lines[s.lineno - 1:s.end_lineno])
            tests.append((f"check line {s.lineno} ({_clip(text)})", code))
        else:
            tests.append((None, code))
    steps = [(0, others)] + [(i + 1, [s]) for i, s in enumerate(body)]
    alias = params[0] if params[0] != entry else None
    return Plan(setup, tests, candidate, modules, prompt, _prefetch(steps, candidate, alias, entry))
