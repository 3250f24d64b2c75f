"""Constrained output (runtime/constraints.py, through llguidance).

Oracles: every constrained reply parses as JSON and validates against its schema with the
`jsonschema` package; a GBNF or regex reply matches the language, checked by Python's `re`;
the tokens a grammar allows are checked against their own bytes.
"""
import json
import re

import jsonschema
import numpy as np
import pytest

from lanternlm import cli
from lanternlm.runtime.constraints import ConstrainedSampler, Grammar, GrammarError
from lanternlm.runtime.model import Model
from lanternlm.runtime.sampling import make_sampler

PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age", "address"],
          "properties": {
              "name": {"type": "string", "maxLength": 24},
              "age": {"type": "integer", "minimum": 0, "maximum": 120},
              "address": {"type": "object", "additionalProperties": False, "required": ["city", "country"],
                          "properties": {"city": {"type": "string", "maxLength": 24},
                                         "country": {"type": "string", "maxLength": 24}}}}}
SHOPPING = {"type": "object", "additionalProperties": False, "required": ["items"],
            "properties": {"items": {"type": "array", "minItems": 1, "maxItems": 4, "items": {
                "type": "object", "additionalProperties": False, "required": ["fruit", "count"],
                "properties": {"fruit": {"enum": ["apple", "banana", "cherry"]},
                               "count": {"type": "integer", "minimum": 1, "maximum": 9}}}}}}
WEATHER = {"type": "object", "additionalProperties": False, "required": ["sky", "celsius", "windy"],
           "properties": {"sky": {"enum": ["sunny", "cloudy", "rainy"]},
                          "celsius": {"type": "number", "minimum": -40, "maximum": 50},
                          "windy": {"type": "boolean"}}}
TREE = {"$defs": {"node": {"type": "object", "additionalProperties": False, "required": ["name", "children"],
                           "properties": {"name": {"type": "string", "maxLength": 12},
                                          "children": {"type": "array", "maxItems": 2,
                                                       "items": {"$ref": "#/$defs/node"}}}}},
        "$ref": "#/$defs/node"}
SCHEMAS = {"nested": PERSON, "array of enums": SHOPPING, "enum, number, boolean": WEATHER, "recursive": TREE}
ASKS = {"nested": "Describe a person and where they live.", "array of enums": "What fruit should I buy?",
        "enum, number, boolean": "What is the weather like today?",
        "recursive": "Describe a small family tree: Anna has two children, Ben and Cara, who have no children."}


@pytest.fixture(scope="module")
def model(smollm2_path):
    return Model.load(smollm2_path, n_ctx=1024, threads=2)


def reply(model, ask, max_tokens=400, **options):
    out = model.create_chat_completion([{"role": "user", "content": ask}], max_tokens=max_tokens, **options)
    choice = out["choices"][0]
    return choice["message"]["content"], choice["finish_reason"]


@pytest.mark.parametrize("name", SCHEMAS)
@pytest.mark.parametrize("sampling", [dict(temperature=0), dict(temperature=0.8, seed=3)])
def test_json_schema_replies_validate(model, name, sampling):
    schema = SCHEMAS[name]
    text, finish = reply(model, ASKS[name] + " Answer in JSON.", **sampling,
                         response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    assert finish == "stop", text
    jsonschema.validate(json.loads(text), schema)


def test_json_object_and_llama_cpp_python_schema_forms(model):
    text, finish = reply(model, "Give me a short JSON object with a cat's name and age.", temperature=0,
                         response_format={"type": "json_object"})
    assert finish == "stop", text
    assert isinstance(json.loads(text), dict)
    text, _ = reply(model, "What is the weather like?", temperature=0,
                    response_format={"type": "json_object", "schema": WEATHER})
    jsonschema.validate(json.loads(text), WEATHER)


def test_gbnf_and_regex_grammars(model):
    gbnf = 'root ::= answer " because " reason\nanswer ::= "yes" | "no"\nreason ::= [a-z ]{1,30} "."\n'
    text = model.chat([{"role": "user", "content": "Is the sky blue?"}], grammar=gbnf, temperature=0, max_tokens=40)
    assert re.fullmatch(r"(yes|no) because [a-z ]{1,30}\.", text), text
    phone = model.generate("My phone number is", grammar=Grammar.from_regex(r" \d{3}-\d{4}"), temperature=0.7,
                           seed=1, max_tokens=20)
    assert re.fullmatch(r" \d{3}-\d{4}", phone), phone


def test_the_allowed_tokens_are_those_the_grammar_can_continue_with(model):
    tok = model.tokenizer
    digits = ConstrainedSampler(make_sampler(temperature=0), Grammar.from_regex(r"[0-9]+"), tok)
    allowed = np.nonzero(digits.allowed())[0]
    pieces = [tok.token_to_piece(int(i)) for i in allowed]
    assert all(p and p.isdigit() for p in pieces)
    assert {tok.token_to_id[str(d)] for d in range(10)} <= set(allowed.tolist())
    # after one digit, end-of-generation is allowed too
    digits.matcher.consume_token(tok.token_to_id["7"])
    assert all(digits.allowed()[sorted(tok.eot_ids)])


def test_apply_bitmask_equals_its_numpy_twin():
    from lanternlm.runtime.constraints import apply_bitmask, apply_bitmask_reference

    rng = np.random.default_rng(0)
    for n in (1, 31, 32, 33, 1000):
        logits = rng.standard_normal(n).astype(np.float32)
        mask = rng.integers(-2**31, 2**31, (n + 31) // 32).astype(np.int32)
        out = np.empty(n, np.float32)
        apply_bitmask(out, logits, mask)
        np.testing.assert_array_equal(out, apply_bitmask_reference(logits, mask))
        bits = [(int(mask[i // 32]) >> (i % 32)) & 1 for i in range(n)]      # by hand
        assert [bool(np.isfinite(v)) for v in out] == [bool(b) for b in bits]


@pytest.mark.parametrize("make, match", [
    (lambda: Grammar.from_json_schema('{"type": '), "invalid JSON schema: not JSON"),
    (lambda: Grammar.from_json_schema([1, 2]), "expected a JSON object"),
    (lambda: Grammar.from_json_schema({"type": "object", "properties": {"a": {"$ref": "#/nope"}}}), "nope"),
    (lambda: Grammar.from_json_schema({"type": "frobnicate"}), "invalid JSON schema"),
    (lambda: Grammar.from_gbnf('root ::= undefined-rule\n'), "invalid GBNF grammar.*undefined-rule"),
    (lambda: Grammar.from_regex("(unclosed"), "invalid regular expression"),
])
def test_a_rejected_grammar_is_a_clear_error(make, match):
    with pytest.raises(GrammarError, match=match):
        make()


def test_response_format_errors(model):
    with pytest.raises(ValueError, match="json_schema"):
        model.create_chat_completion([{"role": "user", "content": "hi"}], response_format={"type": "json_schema"})
    with pytest.raises(ValueError, match="text, json_object or json_schema"):
        model.create_chat_completion([{"role": "user", "content": "hi"}], response_format={"type": "yaml"})


def test_cli_json_schema_and_grammar_flags(smollm2_path, tmp_path, capsys):
    schema = tmp_path / "weather.json"
    schema.write_text(json.dumps(WEATHER))
    rc = cli.main(["run", str(smollm2_path), "--chat", "-p", "What is the weather like?", "--json-schema",
                   str(schema), "--temp", "0", "-n", "120", "-q", "-t", "1"])
    assert rc == 0
    jsonschema.validate(json.loads(capsys.readouterr().out), WEATHER)
    bad = tmp_path / "bad.gbnf"
    bad.write_text("root ::= missing\n")
    rc = cli.main(["run", str(smollm2_path), "-p", "x", "--grammar", str(bad), "-q"])
    err = capsys.readouterr().err
    assert rc != 0 and "invalid GBNF grammar" in err and "missing" in err
