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


def test_fenced_block_defining_the_entry_point_beats_an_earlier_usage_example():
    text = ("Usage:\n```python\nprint(add(1, 2))\n```\nThe function:\n```python\ndef add(a, b):\n"
            "    return a + b\n```\n")
    assert extract_code(text, "add") == "def add(a, b):\n    return a + b\n"
    # without a defining block, the first block is kept (the sandbox then judges it)
    assert extract_code("```python\nprint(1)\n```", "add") == "print(1)\n"


def test_body_after_an_nl_prompt_gets_only_the_signature_prepended():
    prompt = "Return the sum of a and b.\ndef add(a, b):"     # MBPP / built-in task style
    code = extract_code("\n    return a + b\n", "add", prompt=prompt)
    assert code == "def add(a, b):\n    return a + b\n"
