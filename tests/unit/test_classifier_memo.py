"""Router.classifier(): the worker's memoized classify answers exactly what classify answers.

The memo keys on the payload less a trailing `, "seq" : <digits>}`; these tests feed it
payloads that share heads with valid and invalid tails, in any order, and compare every answer
with a fresh `classify`.
"""
from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from support.inline_configs import config, parse

from pgne.payload import INVALID, UNKNOWN_TABLE, UNMONITORED_EVENT, Router

CONFIG = config(
    replace={"      events: [insert]\n": "      columns_to_label:\n        - code: ['alpha', 'beta', 7]\n"
                                         "      events: [insert, delete]\n"},
    append="""
    - table: other.two
      enabled: yes
      function: simple_event_notification
      events: [update]
    """, indent=4)


def router() -> Router:
    cfg = parse(CONFIG)
    return Router(cfg.databases[0], cfg.label_names)


def pgne_payload(table: str, action: str, code: object, count: object, seq: str) -> str:
    """As json_build_object prints it: `"key" : value` pairs, ", " between them, seq last."""
    data = f', "data" : {{"code" : {json.dumps(code)}}}' if code is not None else ""
    return f'{{"table" : {json.dumps(table)}, "action" : {json.dumps(action)}{data}, "count" : {count}, "seq" : {seq}}}'


def test_pgne_payloads_are_classified_like_classify_and_remembered_once_per_head():
    r = router()
    calls = []
    original = r.classify
    r.classify = lambda p: calls.append(p) or original(p)  # noqa: E731 - counting calls
    classify = r.classifier()
    for seq in range(1, 1001):
        payload = pgne_payload("public.one", "INSERT", ["alpha", "beta", "zzz"][seq % 3], 1 + seq % 2, str(seq))
        assert classify(payload) == original(payload)
    assert len(calls) == 6  # 3 label values x 2 counts
    assert classify(pgne_payload("public.one", "INSERT", "alpha", 2, "7")) == (
        ("INSERT", "public", "one", "alpha"), 2)


def test_tails_that_could_change_the_answer_are_never_taken_from_the_memo():
    r = router()
    classify = r.classifier()
    head_valid = pgne_payload("public.one", "INSERT", "alpha", 1, "1")
    assert classify(head_valid)[1] == 1
    for seq in ("01", "-1", "1.5", "1e3", "9" * 5000, "٣", "", "1 ", "true", '"1"'):
        payload = pgne_payload("public.one", "INSERT", "alpha", 1, seq)
        assert classify(payload) == r.classify(payload), seq
    # valid JSON however long (json.loads alone refuses over 4,300 digits); seq is not counted
    assert classify(pgne_payload("public.one", "INSERT", "alpha", 1, "9" * 5000)) == (("INSERT", "public", "one",
                                                                                        "alpha"), 1)
    assert classify(pgne_payload("public.one", "INSERT", "alpha", 1, "01")) == (INVALID, 0)
    assert classify(head_valid + " ") == r.classify(head_valid + " ")
    # an invalid payload remembered first does not make the valid one invalid, and vice versa
    r2 = router()
    c2 = r2.classifier()
    assert c2(pgne_payload("public.one", "INSERT", "alpha", 1, "00")) == (INVALID, 0)
    assert c2(pgne_payload("public.one", "INSERT", "alpha", 1, "0")) == (("INSERT", "public", "one", "alpha"), 1)


def test_results_other_than_counted_are_remembered_too():
    r = router()
    classify = r.classifier()
    cases = {
        pgne_payload("public.nope", "INSERT", "alpha", 1, "{}"): UNKNOWN_TABLE,
        pgne_payload("public.one", "UPDATE", "alpha", 1, "{}"): UNMONITORED_EVENT,
        pgne_payload("public.one", "INSERT", "alpha", 0, "{}"): INVALID,
        '{"table" : "public.one", "action" : , "seq" : {}}': INVALID,
        '{"table" : "public.one, "seq" : {}}': INVALID,  # the separator closes a string: not JSON
    }
    for template, result in cases.items():
        for seq in ("1", "2", "3"):
            assert classify(template.replace("{}", seq)) == (result, 0), template


def test_the_memo_is_bounded():
    r = router()
    classify = r.classifier(memo_size=4)
    for count in range(1, 50):
        payload = pgne_payload("public.one", "INSERT", "beta", count, "3")
        assert classify(payload) == (("INSERT", "public", "one", "beta"), count)


ROUTER = router()
seqs = st.one_of(st.integers(0, 10**18).map(str), st.sampled_from(["00", "01", "-3", "1.0", "2e2", "٣", "", " 4"]),
                 st.text("0123456789", max_size=25))
payloads = st.one_of(
    st.builds(pgne_payload, st.sampled_from(["public.one", "one", "other.two", "public.x", 'we"ird']),
              st.sampled_from(["INSERT", "insert", "DELETE", "UPDATE", "TRUNCATE", "upsert"]),
              st.one_of(st.none(), st.sampled_from(["alpha", "beta", "gamma", 7, "7", True, None])),
              st.sampled_from(["1", "2", "0", "-1", "1.0", '"3"', str(2**53), str(2**53 + 1)]), seqs),
    st.tuples(st.text(max_size=30), seqs).map(lambda t: f'{t[0]}, "seq" : {t[1]}}}'),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(payloads, min_size=1, max_size=30))
def test_any_sequence_of_payloads_gets_classify_s_answers(batch):
    r = ROUTER
    classify = r.classifier(memo_size=8)
    for payload in batch:
        assert classify(payload) == r.classify(payload), payload


def _outcome(loads, text: str) -> tuple:
    try:
        return ("value", repr(loads(text)))
    except RecursionError:
        return ("recursion",)
    except ValueError as exc:
        return ("error", type(exc).__name__, str(exc))


ODD_JSON = ['{"a":1}', ' {"a":1}', '{"a":1} ', '\ufeff{"a":1}', '{"a":1}x', "", "1", '"s"', "nul", '{"a":NaN}',
            "[" * 5000, '{"a":1}\n', '\t{"a":1}', '{"a": 1e400}', '{"a":"\\ud800"}', '{"a":1}{"b":2}']


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.sampled_from(ODD_JSON), st.text(max_size=40),
                 st.builds(lambda pre, body, post: pre + body + post, st.sampled_from(["", " ", "\n", "\ufeff"]),
                           st.sampled_from(ODD_JSON), st.sampled_from(["", " ", "x", "}"]))))
def test_the_fast_json_entry_point_answers_like_json_loads(text):
    import json

    from pgne.payload import _loads

    assert _outcome(_loads, text) == _outcome(json.loads, text)
