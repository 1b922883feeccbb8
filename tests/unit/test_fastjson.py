"""muxlab.node.fastjson parses a JSON-RPC stream exactly as the OVS library's own parser,
whatever the chunking: strings holding brackets, escaped quotes and backslashes split
across chunks, unicode, several messages in one chunk."""
import json
import random

import ovs.json

from muxlab.node.fastjson import Parser

ORIGINAL = ovs.json.Parser   # the library's pure-Python parser, the reference


def messages():
    rng = random.Random(7)
    out = [{"id": 1, "method": "update", "params": [None, {"Load_Balancer": {"a": {"new": {
        "spec": '{"unbalanced": "{{[[", "quote": "\\"", "slash": "\\\\"}', "name": "poison {not json"}}}}]},
           {"id": None, "method": "echo", "params": []},
           {"result": {"x": [1, 2.5, -3e2, True, False, None, "é ü ✓ \u0001"]}, "error": None, "id": 7}]
    for n in range(30):
        out.append({"id": n, "result": [{"row": {"k%d" % i: "".join(rng.choice('ab{}[]"\\ é') for _ in range(rng.randint(0, 12)))
                                                  for i in range(rng.randint(1, 8))}} for _ in range(rng.randint(1, 5))]})
    return out


def parse_stream(parser_class, text, chunks):
    """Feed `text` cut at `chunks` as ovs.jsonrpc does: consume, finish on done, go on."""
    got, parser = [], None
    pieces = [text[a:b] for a, b in zip([0] + chunks, chunks + [len(text)])]
    pending = ""
    for piece in pieces:
        pending += piece
        while pending:
            parser = parser or parser_class()
            pending = pending[parser.feed(pending):]
            if parser.is_done():
                got.append(parser.finish())
                parser = None
            else:
                break
    return got


def test_the_same_values_as_the_ovs_parser_at_any_chunking():
    msgs = messages()
    text = "".join(json.dumps(m, ensure_ascii=rng_ascii) for m, rng_ascii in zip(msgs, [False, True] * 40))
    rng = random.Random(11)
    for _ in range(40):
        cuts = sorted(rng.sample(range(1, len(text)), rng.randint(1, 60)))
        assert parse_stream(Parser, text, cuts) == msgs
    assert parse_stream(ORIGINAL, text, [len(text) // 3]) == msgs
    # a backslash as the last character of a chunk, inside a string
    esc = json.dumps({"s": 'a\\"b'})
    cut = esc.index("\\") + 1
    assert parse_stream(Parser, esc, [cut]) == [{"s": 'a\\"b'}]


def test_errors_are_strings_as_the_ovs_parser_says_them():
    p = Parser()
    p.feed('{"a": tru}')
    assert isinstance(p.finish(), str)
    p = Parser()
    p.feed('{"a": ')
    assert p.finish() == "unexpected end of input"
    assert Parser().finish() == "empty input stream"
    p = Parser()
    p.feed("42")
    assert p.finish() == 42
