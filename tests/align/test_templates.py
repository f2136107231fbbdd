"""Prompt templates: rendering per model family, stop sets, and the one extraction rule.
Run: .venv/bin/python -m pytest tests/align/test_templates.py"""
from __future__ import annotations

import pytest

from align.generate import SamplingParams
from align.prompting import format_prompt
from align.templates import HUMANEVAL_STOP, MBPP_STOP, PANGU_STOP, TEMPLATES, Template, generate, get_template
from evol.seeds import load_source
from rank.plugins import UnknownNameError
from rank.records import Problem

HE = load_source("humaneval", limit=1)[0]          # code prompt: signature + docstring
NL = Problem(id="m1", prompt="Write a function to add two numbers.\ndef add(a, b):", entry_point="add",
             tests=["assert add(1, 2) == 3", "assert add(0, 0) == 0"], meta={"text": "Write a function to add two numbers."})


def test_humaneval_prompt_is_not_quoted_twice():
    assert format_prompt(HE.prompt) == HE.prompt
    assert get_template("pangu").render(HE) == HE.prompt
    assert format_prompt(NL.prompt) == '"""\nWrite a function to add two numbers.\ndef add(a, b):\n"""\n'


def test_completion_follows_the_harness_protocols():
    t = get_template("completion")
    assert t.render(HE) == HE.prompt and t.stop_for(HE) == HUMANEVAL_STOP
    assert t.render(NL) == '"""\nWrite a function to add two numbers.\nassert add(1, 2) == 3\n"""\n'
    assert t.stop_for(NL) == MBPP_STOP


def test_alpaca_and_chat_render_instructions():
    a = get_template("alpaca").render(NL)
    assert a.startswith("Below is an instruction") and a.endswith("def add(a, b):\n\n### Response:")
    (msg,) = get_template("chat").render(HE)
    assert msg["role"] == "user" and HE.prompt.rstrip() in msg["content"] and "```python" in msg["content"]


def test_one_extraction_rule_for_every_template():
    body = "    return a + b\n"
    fenced = "Use it as ```python\nadd(1, 2)\n```.\n```python\ndef add(a, b):\n    return a + b\n```"
    for name in TEMPLATES:
        t = get_template(name)
        assert t.extract(NL, body) == "def add(a, b):\n    return a + b\n", name
        assert t.extract(NL, fenced) == "def add(a, b):\n    return a + b\n", name
    he = get_template("completion").extract(HE, "    return True\n")
    assert he.startswith(HE.prompt) and he.rstrip().endswith("return True")


class Echo:
    """Records each call; answers with the stop set it got, so grouping is visible."""

    def __init__(self):
        self.calls = []

    def generate(self, prompts, params):
        self.calls.append((prompts, params.stop))
        return [[f"{len(params.stop)}"] * params.n for _ in prompts]


def test_generate_groups_problems_by_stop_set_and_keeps_order():
    b = Echo()
    out = generate(b, get_template("completion"), [NL, HE, NL], SamplingParams(n=2))
    assert out == [[str(len(MBPP_STOP))] * 2, [str(len(HUMANEVAL_STOP))] * 2, [str(len(MBPP_STOP))] * 2]
    assert sorted(len(p) for p, _ in b.calls) == [1, 2]
    generate(b, get_template("pangu"), [NL], SamplingParams())
    assert b.calls[-1][1] == PANGU_STOP


def shout(problem):          # a user's own template: a function Problem -> str
    return problem.prompt.upper()


MINE = Template("mine", lambda p: "# " + p.prompt, ["\n\n"])


def test_user_templates_and_unknown_names():
    assert get_template(f"{__name__}:shout").render(NL) == NL.prompt.upper()
    assert get_template(f"{__name__}:MINE").stop_for(NL) == ["\n\n"]
    with pytest.raises(UnknownNameError, match="did you mean 'alpaca'"):
        get_template("alpacca")
    with pytest.raises(UnknownNameError, match="has no attribute"):
        get_template(f"{__name__}:nothing")


# ------------------------------------------------------------------ training text (what the student is trained on)

def test_training_text_is_what_the_student_is_sampled_with():
    from align.templates import training_text

    whole = "def add(a, b):\n    return a + b\n"
    prompt, (c,) = training_text(get_template("pangu"), NL, ["\n" + whole + "\n\n"])
    assert (prompt, c) == (format_prompt(NL.prompt), whole)          # the spec quoted, the program + "\n"
    alpaca, (c,) = training_text(get_template("alpaca"), NL, [whole])
    assert alpaca == get_template("alpaca").render(NL) and c == whole
    # A HumanEval prompt is continued: a program made whole from a sampled body is trained as that body;
    # a program written whole (another model's, another template's) follows the prompt whole, as
    # extraction would read it back.
    body = "    return sorted(numbers)[0]\n"
    prompt, (c_body, c_whole) = training_text(get_template("completion"), HE, [HE.prompt + body, whole])
    assert prompt == HE.prompt and c_body == body and c_whole == whole
    assert get_template("completion").extract(HE, c_body) == HE.prompt + body
    bare = Problem(id="b", prompt=HE.prompt.rstrip("\n"), entry_point=HE.entry_point, tests=HE.tests)
    made_whole = get_template("completion").extract(bare, body)                     # prompt + "\n" + body
    prompt, (c,) = training_text(get_template("completion"), bare, [made_whole])
    assert prompt + c == made_whole                                                 # the body stays on its own line


def _chat_tokenizer(adds_bos: bool):
    from tokenizers.processors import TemplateProcessing

    from align.prompting import EOS
    from align.standin import CHAT_TEMPLATE
    from align.tiny import train_tokenizer

    tok = train_tokenizer(["def add(a, b):\n    return a + b\n", NL.prompt, "```python\n```"], vocab_size=300)
    tok.chat_template = "{{ bos_token }}" + CHAT_TEMPLATE + "{% if not add_generation_prompt %}{{ eos_token }}{% endif %}"
    if adds_bos:    # as Llama's tokenizers: BOS added to every text, and written by the chat template too
        tok._tokenizer.post_processor = TemplateProcessing(single=f"{EOS} $A", special_tokens=[(EOS, tok.eos_token_id)])
    return tok


@pytest.mark.parametrize("adds_bos", [False, True])
def test_chat_training_text_tokenises_as_sampling_does(adds_bos):
    from align.backends.base import encode_prompt
    from align.templates import training_text
    from align.tokenization import encode

    tok = _chat_tokenizer(adds_bos)
    chat = get_template("chat")
    prompt, (completion,) = training_text(chat, NL, ["def add(a, b):\n    return a + b\n"], tok)
    assert completion == "```python\ndef add(a, b):\n    return a + b\n```"    # the answer asked for, no EOS text
    ids, (resp,) = encode(tok, prompt, [completion])
    assert ids == encode_prompt(tok, chat.render(NL))                      # one BOS, the sampler's very tokens
    assert resp[-1] == tok.eos_token_id and resp.count(tok.eos_token_id) == 1
    assert chat.extract(NL, completion) == "def add(a, b):\n    return a + b\n"
    with pytest.raises(ValueError, match="needs the student's tokenizer"):
        training_text(chat, NL, ["x"])
