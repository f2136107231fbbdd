"""Turning a job's tests into a plan: compiled steps, strict asserts, and the calls known in advance.

Runs in the sandbox server (source shipped by rank/sandbox/runners.py). `ast` is imported inside functions so
that the zygote, forked before any job, stays small.
"""
import builtins
import json

from rank.sandbox.wire import Unsupported, encode, frame


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


def _strict_asserts(tree):
    """In every `assert`, turn `a == b` / `a != b` into strict_eq calls (see strict_eq). In place."""
    import ast       # not at module level: the zygote stays smaller
    for node in _walk(tree):
        if isinstance(node, ast.Assert):
            node.test = _strict_compare(node.test)
    return tree


def _strict_compare(node):
    import ast
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in (ast.Eq, ast.NotEq):
        loc = {k: getattr(node, k) for k in ("lineno", "col_offset", "end_lineno", "end_col_offset")}
        new = ast.Call(ast.Name("__rank_eq__", ast.Load(), **loc),
                       [_strict_compare(node.left), _strict_compare(node.comparators[0])], [], **loc)
        return ast.UnaryOp(ast.Not(), new, **loc) if isinstance(node.ops[0], ast.NotEq) else new
    if isinstance(node, (ast.BoolOp, ast.UnaryOp)):           # `assert a == 1 and not b == 2`
        for field in ("values", "operand"):
            if hasattr(node, field):
                value = getattr(node, field)
                setattr(node, field, [_strict_compare(v) for v in value] if field == "values"
                        else _strict_compare(value))
    return node


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


class Plan:
    """A job's compiled tests. `prefetch`: framed call requests (literal arguments, in evaluation
    order), or None when the calls cannot be known in advance or once a prefetch did not match."""

    def __init__(self, setup, tests, prefetch=None):
        self.setup, self.tests, self.prefetch = setup, tests, prefetch
        self.called_everywhere = set()      # names every snippet calls (to find the function under test)
        self.free = None                    # per snippet: the names it needs from outside itself


_PLANS = {}


def plan_tests(job):
    """plan_tests_uncached, memoised by test text: RRTF runs many candidates against the same tests."""
    key = (json.dumps(job.get("tests")), job.get("test"), job.get("entry_point"))
    if key not in _PLANS:
        if len(_PLANS) >= 256:
            _PLANS.clear()
        _PLANS[key] = plan_tests_uncached(job)
    return _PLANS[key]


class _NoPrefetch(Exception):
    pass


def _planned_calls(statements, candidate, entry, walks=None):
    """Framed requests for the calls these statements make to program functions, in evaluation order;
    raises _NoPrefetch when that cannot be known from the source alone. `walks`: id(statement) -> its
    _walk, where the caller has them already."""
    import ast
    AST = ast.AST
    bound = set(dir(builtins)) | {"__rank_eq__"}
    for stmt in statements:
        for n in (walks[id(stmt)] if walks else _walk(stmt)):
            _bind(n, bound)
    bound -= {candidate, entry}
    calls = []

    def visit(node):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            return                                          # bodies run later, if ever
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id not in bound:
            if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
                raise _NoPrefetch()
            try:
                args = [ast.literal_eval(a) for a in node.args]
                kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                raise _NoPrefetch() from None
            name = entry if node.func.id == candidate else node.func.id
            calls.append(frame(["call", name, encode(args), encode(kwargs)]))
            return
        if isinstance(node, ast.Name) and node.id not in bound:
            raise _NoPrefetch()                             # a program name used as a value
        if isinstance(node, ast.Assert):
            visit(node.test)        # the message runs only if the assert fails: a call made there is not
            return                  # in the prefetch, so it is a mismatch and the job reruns without one
        for field in node._fields:                         # ast.iter_child_nodes, inlined
            value = getattr(node, field, None)
            if isinstance(value, AST):
                visit(value)
            elif isinstance(value, list):
                for item in value:
                    if isinstance(item, AST):
                        visit(item)

    try:
        for stmt in statements:
            visit(stmt)
    except (RecursionError, Unsupported):
        raise _NoPrefetch() from None
    if not calls or sum(map(len, calls)) > 32768:           # must fit the pipe without blocking
        raise _NoPrefetch()
    return calls


def _with_prefetch(setup, tests, statements, candidate, entry, walks=None):
    try:
        return Plan(setup, tests, _planned_calls(statements, candidate, entry, walks))
    except _NoPrefetch:
        return Plan(setup, tests)


def plan_tests_uncached(job):
    """-> (setup code objects, [(label or None, code object)]). Splits a check(candidate) into its
    top-level asserts when its body is straight-line code; label None marks a setup step kept in order."""
    import ast       # not at module level: the zygote stays smaller
    if job.get("tests") is not None:
        trees = [ast.parse(src) for src in job["tests"]]
        # a snippet with no free name (`assert True`, "") cannot test the program: run it, don't count it
        free = [_free_names(tree) for tree in trees]
        tests = [(f"test {i} ({_clip(src)})" if free[i] else None, compile(_strict_asserts(tree), f"<test {i}>", "exec"))
                 for i, (src, tree) in enumerate(zip(job["tests"], trees))]
        plan = _with_prefetch([], tests, [s for t in trees for s in t.body], None, None)
        plan.free = free
        plan.called_everywhere = set.intersection(*[
            {n.func.id for n in _walk(t) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
            for t in trees])
        return plan
    entry, source = job["entry_point"], job["test"]
    module = _strict_asserts(ast.parse(source))
    setup = [compile(module, "<test>", "exec")]
    check = next((s for s in module.body if isinstance(s, ast.FunctionDef) and s.name == "check"), None)
    if check is None:
        raise ValueError("the test source defines no check() function")
    params = [a.arg for a in check.args.args]
    refs = {entry, *params[:1]}
    others = [s for s in module.body if s is not check]
    walks = {id(s): _walk(s) for s in others + check.body}  # each statement walked once
    names = {id(s): {n.id for n in walks[id(s)] if type(n) is ast.Name} for s in check.body}
    body = [s for s in check.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    simple = (ast.Assert, ast.Assign, ast.AnnAssign, ast.AugAssign, ast.Import, ast.ImportFrom, ast.Pass, ast.Expr)
    splittable = len(params) == 1 and all(isinstance(s, simple) for s in body) and not any(
        names[id(s)] & refs for s in body if not isinstance(s, ast.Assert))
    if not splittable:
        touches = any(names[id(s)] & refs for s in check.body)
        return Plan(setup, [("check" if touches else None, compile(f"check({entry})", "<check>", "exec"))])
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
    return _with_prefetch(setup, tests, others + body, params[0], entry, walks)
