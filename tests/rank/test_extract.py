from rank.extract import extract_code


def test_bare_function_with_trailing_prose():
    text = "def f(x):\n    return x + 1\n\nThis function adds one.\n"
    assert extract_code(text, "f") == "def f(x):\n    return x + 1\n"


def test_fenced_block_wins():
    text = "Here you go:\n```python\ndef f(x):\n    return 2 * x\n```\nand more text ```py\nx=1\n```"
    assert extract_code(text, "f") == "def f(x):\n    return 2 * x\n"


def test_stops_at_next_triple_quoted_prompt():
    text = 'def f(xs):\n    return sum(xs)\n"""\nNext problem\n"""\ndef g(): pass\n'
    assert extract_code(text, "f") == "def f(xs):\n    return sum(xs)\n"


def test_body_only_completion_gets_prompt():
    prompt = 'def add(a, b):\n    """Add."""\n'
    code = extract_code("    return a + b\n", "add", prompt=prompt)
    ns = {}
    exec(code, ns)
    assert ns["add"](2, 3) == 5


def test_unparseable_text_is_returned_for_the_sandbox_to_judge():
    text = "def f(x:\n    return"
    assert extract_code(text, "f") == text
