"""The cache's digests: what makes two requests the same, for exact match, semantic context and sessions."""

from __future__ import annotations

from gateway.cache.keys import context_key, conversation_prefix, exact_key, session_digest

BODY = {"model": "auto", "temperature": 0, "messages": [{"role": "user", "content": "Hi?"}]}


def test_exact_keys_ignore_delivery_and_key_order_but_not_parameters_flags_pool_or_tenant():
    same = {"messages": BODY["messages"], "stream": True, "user": "u1", "temperature": 0, "model": "auto",
            "stream_options": {"include_usage": True}, "max_tokens": None}
    assert exact_key("p", "t", BODY, None, None) == exact_key("p", "t", same, None, None)
    assert exact_key("p", "t", BODY, None, None) != exact_key("p", "t", {**BODY, "temperature": 0.5}, None, None)
    assert exact_key("p", "t", BODY, None, None) != exact_key("p", "t", BODY, {"cost": 1}, None)
    assert exact_key("p", "t", BODY, None, None) != exact_key("p", "t", BODY, None, "strongest")
    assert exact_key("p", "t", BODY, None, None) != exact_key("q", "t", BODY, None, None)
    assert exact_key("p", "t", BODY, None, None) != exact_key("p", "u", BODY, None, None)


def test_the_semantic_context_drops_only_the_last_user_messages_text():
    other = {**BODY, "messages": [{"role": "user", "content": "Hello there?"}]}
    assert context_key("p", "t", BODY, None, None) == context_key("p", "t", other, None, None)
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    with_image = {**BODY, "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi?"}, image]}]}
    assert context_key("p", "t", BODY, None, None) != context_key("p", "t", with_image, None, None)
    history = {**BODY, "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                                    *BODY["messages"]]}
    assert context_key("p", "t", BODY, None, None) != context_key("p", "t", history, None, None)


def test_a_first_turn_has_no_conversation_prefix_and_later_turns_match_the_remembered_digest():
    system = {"role": "system", "content": "Be brief."}
    turn1 = [system, {"role": "user", "content": "Q1"}]
    assert conversation_prefix(turn1) is None  # a shared system prompt alone names no conversation
    turn2 = [*turn1, {"role": "assistant", "content": [{"type": "text", "text": "A1"}]},
             {"role": "user", "content": "Q2"}]
    prefix = conversation_prefix(turn2)
    assert prefix is not None
    # remembered after turn 1 as its messages plus the answer (content as a string): the same digest
    assert session_digest("p", "t", prefix) == session_digest("p", "t", [*turn1, {"role": "assistant",
                                                                                  "content": "A1"}])
    assert session_digest("p", "t", prefix) != session_digest("p", "other-tenant", prefix)
