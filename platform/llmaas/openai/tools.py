"""Tool calling for chat: how tools reach the prompt, how calls are constrained, how they are parsed.

- **Prompt.** A model whose chat template takes ``tools`` gets them there (its own format, as its
  makers trained it); the conversation's tool calls and tool results go in as Hugging Face
  templates expect them. Any other model gets a system prompt the platform writes (Hermes'
  format, which many open models were tuned on): the tools as JSON, and the instruction to answer
  a call as ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``; past calls are written
  that way into assistant turns, and tool results go in as ``<tool_response>`` user turns.
- **Constrained calls.** ``tool_choice: required`` constrains the reply to a JSON array of
  ``{"name", "arguments"}`` objects, each valid for its tool (one item when
  ``parallel_tool_calls`` is false); a named function constrains it to that function's
  arguments. Either way the arguments parse and are valid for the schema by construction (as
  vLLM does); only a reply cut by ``max_tokens`` can be incomplete, and then it is returned as
  text with ``finish_reason: length``.
- **auto.** The reply is free; ``<tool_call>`` blocks holding JSON with a ``name`` of one of the
  tools become calls (Hermes' parser, which is what the platform's prompt asks for), the rest
  stays content. A block that does not parse stays content, so nothing the model wrote is lost.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from llmaas.engine.types import StructuredOutput
from llmaas.openai.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    ChatTool,
    FunctionCall,
    FunctionCallDelta,
    NamedToolChoice,
    ToolCall,
    ToolCallDelta,
)

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _tool_json(tool: ChatTool) -> dict[str, Any]:
    fn = tool.function
    out: dict[str, Any] = {"name": fn.name}
    if fn.description:
        out["description"] = fn.description
    out["parameters"] = fn.arguments_schema()
    return out


def system_prompt(tools: Sequence[ChatTool]) -> str:
    """The platform's tool prompt (Hermes' format) for a template that does not take tools."""
    listed = "\n".join(json.dumps(_tool_json(t), ensure_ascii=False) for t in tools)
    return (
        "You are a function calling AI model. You may call one or more of the functions below to "
        "help with the user's request. Do not make up argument values.\n"
        f"<tools>\n{listed}\n</tools>\n"
        "To call a function, reply with a JSON object holding its name and arguments inside "
        f"{CALL_OPEN}{CALL_CLOSE} tags, one block per call:\n"
        f'{CALL_OPEN}\n{{"name": "<function-name>", "arguments": {{"<argument>": "<value>"}}}}\n{CALL_CLOSE}'
    )


def _call_text(call: ToolCall) -> str:
    body = {"name": call.function.name, "arguments": call.arguments()}
    return f"{CALL_OPEN}\n{json.dumps(body, ensure_ascii=False)}\n{CALL_CLOSE}"


def template_messages(
    request: ChatCompletionRequest, *, native_tools: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The conversation as the chat template takes it, and the ``tools`` argument for it (None: none).

    ``native_tools``: the model's template renders tools itself; otherwise the platform's prompt
    carries them (only when the request has tools).
    """
    tools = request.tools or []
    messages = request.messages
    if native_tools:
        return [_native(m) for m in messages], ([t.model_dump(exclude_none=True) for t in tools] or None)
    out = [_platform(m) for m in messages]
    if tools and request.effective_tool_choice() != "none":
        prompt = system_prompt(tools)
        if out and out[0]["role"] in ("system", "developer"):
            out[0] = {"role": out[0]["role"], "content": f"{out[0]['content']}\n\n{prompt}"}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out, None


def _native(message: ChatMessage) -> dict[str, Any]:
    """A message as Hugging Face templates take it: a call's arguments as an object."""
    out: dict[str, Any] = {"role": message.role, "content": message.text()}
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.function.name, "arguments": c.arguments()},
            }
            for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        out["name"] = message.name
    return out


def _platform(message: ChatMessage) -> dict[str, str]:
    """A message for a template without tools: calls as text, tool results as user turns."""
    if message.role == "tool":
        return {"role": "user", "content": f"<tool_response>\n{message.text()}\n</tool_response>"}
    text = message.text()
    if message.tool_calls:
        calls = "\n".join(_call_text(c) for c in message.tool_calls)
        text = f"{text}\n{calls}" if text else calls
    return {"role": message.role, "content": text}


# ---- constrained calls -------------------------------------------------------------------------
def call_constraint(request: ChatCompletionRequest) -> StructuredOutput | None:
    """The constraint a required or named tool choice puts on the reply (None for auto and none)."""
    choice = request.effective_tool_choice()
    tools = request.tools or []
    if isinstance(choice, NamedToolChoice):
        tool = next(t for t in tools if t.function.name == choice.function.name)
        schema = _closed(tool.function.arguments_schema())
        return StructuredOutput(kind="json", json_schema=json.dumps(schema), param="tools")
    if choice != "required":
        return None
    items = [
        {
            "type": "object",
            "properties": {
                "name": {"type": "string", "enum": [t.function.name]},
                "arguments": _closed(t.function.arguments_schema()),
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in tools
    ]
    array: dict[str, Any] = {"type": "array", "items": {"anyOf": items}, "minItems": 1}
    if request.parallel_tool_calls is False:
        array["maxItems"] = 1
    return StructuredOutput(kind="json", json_schema=json.dumps(array), param="tools")


def _closed(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with ``additionalProperties: false`` where it says nothing of other keys.

    NOTE: arguments hold the keys a tool declares; a schema that leaves other keys open lets a
    small model add made-up keys until ``max_tokens`` cuts the call (seen with SmolLM2-135M).
    A schema that allows other keys explicitly keeps them.
    """
    if schema.get("type") == "object" and "properties" in schema and "additionalProperties" not in schema:
        return {**schema, "additionalProperties": False}
    return schema


def parse_constrained(request: ChatCompletionRequest, text: str) -> list[ToolCall] | None:
    """The calls in a constrained reply; None when it does not parse (a reply cut short)."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    choice = request.effective_tool_choice()
    if isinstance(choice, NamedToolChoice):
        return [_call(choice.function.name, value)]
    if not isinstance(value, list):
        return None
    calls = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return None
        calls.append(_call(item["name"], item.get("arguments", {})))
    return calls


def _call(name: str, arguments: Any) -> ToolCall:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return ToolCall(id=call_id(), function=FunctionCall(name=name, arguments=text))


# ---- auto: parsing what the model wrote --------------------------------------------------------
def parse_auto(text: str, names: Sequence[str]) -> tuple[str, list[ToolCall]]:
    """The content outside well-formed ``<tool_call>`` blocks, and the calls those blocks hold.

    A block counts when it holds a JSON object whose ``name`` is one of ``names``; anything else
    (an unclosed block, text that is not JSON) stays in the content.
    """
    content: list[str] = []
    calls: list[ToolCall] = []
    rest = text
    while True:
        start = rest.find(CALL_OPEN)
        end = rest.find(CALL_CLOSE, start + len(CALL_OPEN)) if start >= 0 else -1
        if start < 0 or end < 0:
            content.append(rest)
            break
        call = _block_call(rest[start + len(CALL_OPEN) : end], names)
        if call is None:
            content.append(rest[: end + len(CALL_CLOSE)])
        else:
            content.append(rest[:start])
            calls.append(call)
        rest = rest[end + len(CALL_CLOSE) :]
    joined = "".join(content)
    return (joined.strip() if calls else joined), calls


def from_message(message: dict[str, Any]) -> tuple[str, list[ToolCall]]:
    """A message transformers' ``parse_response`` made (``content``, ``tool_calls`` of
    ``{"type": "function", "function": {"name", "arguments"}}``) as content and calls."""
    calls = []
    for call in message.get("tool_calls") or []:
        function = call.get("function", call) if isinstance(call, dict) else {}
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            calls.append(_call(function["name"], function.get("arguments", {})))
    content = message.get("content")
    return (content if isinstance(content, str) else ""), calls


def _block_call(body: str, names: Sequence[str]) -> ToolCall | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    if not isinstance(value, dict) or value.get("name") not in names:
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    return _call(str(value["name"]), arguments)


# ---- streaming ---------------------------------------------------------------------------------
def call_deltas(calls: Sequence[ToolCall], first_index: int = 0) -> list[ToolCallDelta]:
    """Deltas that send ``calls`` whole: each call's id, type, name and arguments in one piece."""
    return [
        ToolCallDelta(
            index=first_index + i,
            id=c.id,
            type="function",
            function=FunctionCallDelta(name=c.function.name, arguments=c.function.arguments),
        )
        for i, c in enumerate(calls)
    ]


@dataclass
class ToolStream:
    """One streamed choice of a request with tools: what goes out as content, what as calls.

    ``auto``: text streams as content until a ``<tool_call>`` may be starting; from there it is
    held until the block closes, then sent as a call (or, when it does not parse, as content).
    Named function: the call's header goes out first, then the reply streams as its arguments.
    ``required``: the reply is held and sent as calls when it is complete.
    """

    request: ChatCompletionRequest
    held: str = ""
    calls: int = 0
    named_started: bool = False
    whole: list[str] = field(default_factory=list)

    @property
    def mode(self) -> str:
        choice = self.request.effective_tool_choice()
        if isinstance(choice, NamedToolChoice):
            return "named"
        return choice if self.request.tools else "none"

    def push(self, text: str) -> tuple[str, list[ToolCallDelta]]:
        """Content and call deltas to send for ``text``, the next piece of the reply."""
        mode = self.mode
        self.whole.append(text)
        if mode == "named":
            return "", self._named(text)
        if mode == "required":
            self.held += text
            return "", []
        if mode != "auto":
            return text, []
        self.held += text
        return self._auto(final=False)

    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        """What is still held, at the end of the reply."""
        mode = self.mode
        if mode == "required":
            calls = parse_constrained(self.request, self.held)
            held, self.held = self.held, ""
            if calls is None:
                return held, []
            self.calls = len(calls)
            return "", call_deltas(calls)
        if mode == "auto":
            return self._auto(final=True)
        return "", []

    def _named(self, text: str) -> list[ToolCallDelta]:
        choice = self.request.effective_tool_choice()
        assert isinstance(choice, NamedToolChoice)
        if not self.named_started:
            self.named_started, self.calls = True, 1
            return [
                ToolCallDelta(
                    index=0,
                    id=call_id(),
                    type="function",
                    function=FunctionCallDelta(name=choice.function.name, arguments=text),
                )
            ]
        return [ToolCallDelta(index=0, function=FunctionCallDelta(arguments=text))] if text else []

    def _auto(self, *, final: bool) -> tuple[str, list[ToolCallDelta]]:
        names = [t.function.name for t in self.request.tools or []]
        out: list[str] = []
        deltas: list[ToolCallDelta] = []
        while self.held:
            start = self.held.find(CALL_OPEN)
            if start < 0:
                keep = 0 if final else _partial_suffix(self.held, CALL_OPEN)
                out.append(self.held[: len(self.held) - keep])
                self.held = self.held[len(self.held) - keep :]
                break
            end = self.held.find(CALL_CLOSE, start + len(CALL_OPEN))
            if end < 0:
                out.append(self.held[:start])
                self.held = self.held[start:]
                if final:  # an unclosed block: it is content after all
                    out.append(self.held)
                    self.held = ""
                break
            call = _block_call(self.held[start + len(CALL_OPEN) : end], names)
            if call is None:
                out.append(self.held[: end + len(CALL_CLOSE)])
            else:
                out.append(self.held[:start])
                deltas.extend(call_deltas([call], self.calls))
                self.calls += 1
            self.held = self.held[end + len(CALL_CLOSE) :]
        text = "".join(out)
        if self.calls and not text.strip():
            text = ""
        return text, deltas


def _partial_suffix(text: str, marker: str) -> int:
    """The length of the longest end of ``text`` that starts ``marker`` (it may be arriving)."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0
