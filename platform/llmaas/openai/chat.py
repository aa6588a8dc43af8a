"""``POST /v1/chat/completions``: the chat template, tools and structured output, logprobs."""

from __future__ import annotations

from collections.abc import AsyncIterator

from llmaas.config.catalog import Task
from llmaas.engine.types import (
    GenerationChunk,
    TokenLogprob,
)
from llmaas.metrics import RequestTrace
from llmaas.openai import tools as tool_calling
from llmaas.openai.choices import (
    Prepared,
    Prompts,
    chunk_output,
    finish_reason,
)
from llmaas.openai.core import ROUTE_CHAT, ServiceCore
from llmaas.openai.errors import bad_request
from llmaas.openai.logprobs import chat_logprobs, token_ids
from llmaas.openai.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChoiceLogprobs,
    DeltaMessage,
    ToolCall,
    new_id,
    now,
)


class ChatRoutes(ServiceCore):
    """``POST /v1/chat/completions``, whole and streamed, with tools and structured output."""

    async def _supports_tools(self, model_id: str) -> bool:
        known = self._tool_templates.get(model_id)
        if known is None:
            known = self._tool_templates[model_id] = await self._call(self.tokenizer.supports_tools(model_id))
        return known

    async def _response_parser(self, request: ChatCompletionRequest, model_id: str) -> bool:
        """Whether an ``auto`` reply is parsed by the tokenizer's response template (transformers'
        ``parse_response``): a template that renders tools and ships one; else the Hermes parser."""
        if not request.tools or request.effective_tool_choice() != "auto":
            return False
        if not await self._supports_tools(model_id):
            return False
        known = self._response_templates.get(model_id)
        if known is None:
            known = self._response_templates[model_id] = await self._call(
                self.tokenizer.parses_responses(model_id)
            )
        return known

    async def _parsed(
        self, request: ChatCompletionRequest, prepared: Prepared, text: str
    ) -> tuple[str, list[ToolCall]]:
        tools = [t.model_dump(exclude_none=True) for t in request.tools or []]
        message = await self._call(
            self.tokenizer.parse_response(prepared.spec.id, prepared.prompts[0], text, tools)
        )
        return tool_calling.from_message(message)

    async def _chat_prompt(self, request: ChatCompletionRequest) -> Prompts:
        spec = self._spec(request.model, Task.GENERATE, "chat completions")
        native = bool(request.tools) and await self._supports_tools(spec.id)
        messages, tools = tool_calling.template_messages(request, native_tools=native)
        ids = await self._call(
            self.tokenizer.chat_template(spec.id, messages, request.add_generation_prompt, tools)
        )
        if not ids:
            raise bad_request("messages render to an empty prompt", param="messages")
        return Prompts(spec, [ids])

    async def chat(self, request: ChatCompletionRequest) -> ChatCompletionResponse:
        with self._trace(request.model, ROUTE_CHAT) as trace:
            prompts = await self._chat_prompt(request)
            prepared = await self._prepare(request, prompts, "messages")
            choices = await self._with_timeout(self._collect(prepared, trace))
            logprobs: list[ChoiceLogprobs | None] = [None] * len(choices)
            if request.logprobs:
                wanted = token_ids(entry for c in choices for entry in c.logprobs)
                strings = await self._strings(prepared.spec.id, wanted)
                top = request.top_logprobs or 0
                logprobs = [ChoiceLogprobs(content=chat_logprobs(c.logprobs, strings, top)) for c in choices]
            parsed: list[tuple[str, list[ToolCall]] | None] = [None] * len(choices)
            if await self._response_parser(request, prepared.spec.id):
                parsed = [await self._parsed(request, prepared, "".join(c.text)) for c in choices]
        return ChatCompletionResponse(
            id=new_id("chatcmpl"),
            created=now(),
            model=prepared.spec.id,
            choices=[
                _chat_choice(request, i, "".join(c.text), c.finish_reason, logprobs[i], parsed[i])
                for i, c in enumerate(choices)
            ],
            usage=self._usage(prepared, sum(c.completion_tokens for c in choices)),
        )

    async def chat_stream(self, request: ChatCompletionRequest) -> AsyncIterator[ChatCompletionChunk]:
        _, prepared, trace, merged = await self._start_stream(
            request, ROUTE_CHAT, self._chat_prompt(request), "messages"
        )
        return self._chat_chunks(request, prepared, trace, merged)

    async def _chat_chunks(
        self,
        request: ChatCompletionRequest,
        prepared: Prepared,
        trace: RequestTrace,
        merged: AsyncIterator[tuple[int, GenerationChunk]],
    ) -> AsyncIterator[ChatCompletionChunk]:
        rid, created, total = new_id("chatcmpl"), now(), 0
        model = prepared.spec.id
        pending: list[list[TokenLogprob]] = [[] for _ in prepared.requests]
        tools = [tool_calling.ToolStream(request) for _ in prepared.requests]
        # NOTE: a reply the tokenizer's response template parses is held whole, then sent parsed
        whole = await self._response_parser(request, model)
        held: list[list[str]] = [[] for _ in prepared.requests]
        with trace:
            for index in range(len(prepared.requests)):
                yield ChatCompletionChunk(
                    id=rid,
                    created=created,
                    model=model,
                    choices=[ChatChunkChoice(index=index, delta=DeltaMessage(role="assistant", content=""))],
                )
            async for index, chunk in merged:
                text, _, entries = chunk_output(prepared, chunk)
                pending[index].extend(entries)
                if whole:
                    held[index].append(text)
                    text, calls = "", []
                    if chunk.finish_reason is not None:
                        text, found = await self._parsed(request, prepared, "".join(held[index]))
                        calls = tool_calling.call_deltas(found)
                        tools[index].calls = len(found)
                else:
                    text, calls = tools[index].push(text)
                    if chunk.finish_reason is not None:
                        rest, more = tools[index].finish()
                        text, calls = text + rest, calls + more
                if not text and not calls and chunk.finish_reason is None:
                    continue  # NOTE: logprobs of tokens without text yet go out with the next text
                if chunk.finish_reason is not None:
                    total += chunk.num_generated_tokens
                logprobs = None
                if request.logprobs:
                    strings = await self._strings(model, token_ids(pending[index]))
                    content = chat_logprobs(pending[index], strings, request.top_logprobs or 0)
                    logprobs, pending[index] = ChoiceLogprobs(content=content), []
                delta = DeltaMessage(content=text or None, tool_calls=calls or None)
                finish = finish_reason(chunk)
                if finish == "stop" and tools[index].calls:
                    finish = "tool_calls"
                yield ChatCompletionChunk(
                    id=rid,
                    created=created,
                    model=model,
                    choices=[
                        ChatChunkChoice(index=index, delta=delta, logprobs=logprobs, finish_reason=finish)
                    ],
                )
            if request.stream_options and request.stream_options.include_usage:
                yield ChatCompletionChunk(
                    id=rid, created=created, model=model, choices=[], usage=self._usage(prepared, total)
                )


def _chat_choice(
    request: ChatCompletionRequest,
    index: int,
    text: str,
    finish: str | None,
    logprobs: ChoiceLogprobs | None,
    parsed: tuple[str, list[ToolCall]] | None = None,
) -> ChatChoice:
    """A chat choice: its text as content, or as tool calls where the request has tools (``parsed``:
    what the tokenizer's response template made of it)."""
    calls: list[ToolCall] | None = None
    if parsed is not None:
        text, found = parsed
        calls = found or None
    elif request.calls_tools():
        calls = tool_calling.parse_constrained(request, text)
        if calls is not None:
            text = ""
    elif request.tools and request.effective_tool_choice() == "auto":
        text, hermes = tool_calling.parse_auto(text, [t.function.name for t in request.tools])
        calls = hermes or None
    if calls and finish == "stop":
        finish = "tool_calls"
    message = AssistantMessage(content=text if text or not calls else None, tool_calls=calls)
    return ChatChoice(index=index, message=message, logprobs=logprobs, finish_reason=finish)
