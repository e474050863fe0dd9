"""Legacy completions (``POST /v1/completions``) <-> chat completions: the ``prompt`` is one user message, the
answer's message content is the choice's ``text`` (``object: text_completion``), streamed as text_completion
chunks. Parameters chat cannot honour (``echo``, ``suffix``, ``best_of``, ``logprobs``, a batch of prompts) are
refused with a 400 naming them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import orjson

from gateway.errors import invalid_value as _bad
from gateway.translate.sse import DONE, as_dict, as_str, chat_chunks, chunk_error

PASSED = ("max_tokens", "temperature", "top_p", "stop", "n", "seed", "presence_penalty", "frequency_penalty",
          "logit_bias", "user", "stream", "poolgate")
SUPPORTED = frozenset({"model", "prompt", "stream_options", *PASSED})
#: Accepted only at their defaults (what a client library may send explicitly).
DEFAULTS: dict[str, Any] = {"echo": False, "suffix": None, "best_of": 1, "logprobs": None}


def _prompt(value: Any) -> str:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        raise _bad("a batch of prompts (or token arrays) is not supported by poolgate: send one prompt string per "
                   "request", "prompt")
    raise _bad("'prompt' must be a string", "prompt")


def request_to_chat(body: Any) -> tuple[dict[str, Any], bool]:
    """(the chat body, whether the client asked for the usage chunk of a stream)."""
    if not isinstance(body, dict):
        raise _bad("request body must be a JSON object", "body")
    for name, default in DEFAULTS.items():
        if name in body and body[name] != default and body[name] is not None:
            raise _bad(f"parameter {name!r} is not supported by poolgate's /v1/completions (chat backends cannot "
                       f"honour it)", name)
    unsupported = sorted(set(body) - SUPPORTED - set(DEFAULTS))
    if unsupported:
        raise _bad(f"parameter(s) {unsupported} are not supported by poolgate's /v1/completions", unsupported[0])
    chat: dict[str, Any] = {"model": body.get("model"), "messages": [{"role": "user", "content":
                                                                      _prompt(body.get("prompt"))}]}
    chat.update({k: body[k] for k in PASSED if body.get(k) is not None})
    opts = body.get("stream_options")
    wants_usage = isinstance(opts, dict) and opts.get("include_usage") is True
    if body.get("stream") is True:
        chat["stream_options"] = {"include_usage": True}
    return chat, wants_usage


def _choice(index: int, text: str, finish: Any) -> dict[str, Any]:
    return {"text": text, "index": index, "logprobs": None, "finish_reason": finish}


def answer_from_chat(parsed: dict[str, Any]) -> dict[str, Any]:
    choices = []
    raw = parsed.get("choices")
    for i, c in enumerate(raw if isinstance(raw, list) else []):
        c = as_dict(c)
        text = as_str(as_dict(c.get("message")).get("content"))
        choices.append(_choice(c.get("index", i), text, c.get("finish_reason")))
    return {"id": f"cmpl-{str(parsed.get('id', '')).removeprefix('chatcmpl-')}", "object": "text_completion",
            "created": parsed.get("created", 0), "model": parsed.get("model"), "choices": choices,
            "usage": parsed.get("usage")}


def _data(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


async def stream_from_chat(chunks: AsyncIterator[bytes], wants_usage: bool) -> AsyncIterator[bytes]:
    # closed as soon as this stream is: a client that leaves closes the relay (upstream, log row) at once
    async with aclosing(chat_chunks(chunks)) as reader:
        async for chunk in reader:
            if chunk is DONE:
                yield b"data: [DONE]\n\n"
                continue
            if chunk_error(chunk) is not None:
                yield _data(chunk)
                continue
            base = {"id": f"cmpl-{str(chunk.get('id', '')).removeprefix('chatcmpl-')}", "object": "text_completion",
                    "created": chunk.get("created", 0), "model": chunk.get("model")}
            choices = []
            for c in chunk.get("choices") or []:
                text = as_str(as_dict(c.get("delta")).get("content"))
                if text or c.get("finish_reason"):
                    choices.append(_choice(c.get("index", 0), text, c.get("finish_reason")))
            if choices:
                yield _data({**base, "choices": choices})
            elif chunk.get("usage") and wants_usage:
                yield _data({**base, "choices": [], "usage": chunk["usage"]})
