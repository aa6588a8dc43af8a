"""``POST /v1/completions``: prompts (text or token ids, batched), echo and logprobs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

from llmaas.config.catalog import Task
from llmaas.engine.types import (
    GenerationChunk,
    TokenLogprob,
)
from llmaas.metrics import RequestTrace
from llmaas.openai.choices import (
    Choice,
    Prepared,
    Prompts,
    StreamState,
    chunk_finish,
    chunk_output,
    prompt_entries,
)
from llmaas.openai.core import ROUTE_COMPLETIONS, ServiceCore
from llmaas.openai.errors import bad_request
from llmaas.openai.logprobs import completion_logprobs, token_ids
from llmaas.openai.protocol import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    new_id,
    now,
)


class CompletionRoutes(ServiceCore):
    """``POST /v1/completions``, whole and streamed."""

    async def _completion_prompts(self, request: CompletionRequest) -> Prompts:
        spec = self._spec(request.model, Task.GENERATE, "completions")
        given = request.prompts()
        texts = [(i, p) for i, p in enumerate(given) if isinstance(p, str)]
        ids: list[list[int]] = [p if isinstance(p, list) else [] for p in given]
        if texts:
            encoded = await self._call(self.tokenizer.encode(spec.id, [t for _, t in texts], True))
            for (i, _), tokens in zip(texts, encoded, strict=True):
                ids[i] = tokens
        for i, tokens in enumerate(ids):
            if not tokens:
                where = "prompt" if len(ids) == 1 else f"prompt[{i}]"
                raise bad_request(f"{where} encodes to no tokens", param=where)
        echo = None
        if request.echo:
            if any(isinstance(p, list) for p in given):
                # NOTE: checked before decoding: the tokenizer cannot take an id past its vocabulary
                vocab = (await self.model_info(spec.id)).vocab_size
                for i, tokens in enumerate(ids):
                    if any(t < 0 or t >= vocab for t in tokens):
                        where = "prompt" if len(ids) == 1 else f"prompt[{i}]"
                        raise bad_request(
                            f"{where} holds token ids outside the vocabulary (0..{vocab - 1})", param=where
                        )
            # NOTE: a prompt given as token ids echoes as their text, special tokens included
            echo = [
                p if isinstance(p, str) else await self._call(self.tokenizer.decode(spec.id, p, False))
                for p in given
            ]
        return Prompts(spec, ids, echo)

    async def completion(self, request: CompletionRequest) -> CompletionResponse:
        with self._trace(request.model, ROUTE_COMPLETIONS) as trace:
            prompts = await self._completion_prompts(request)
            prepared = await self._prepare(request, prompts, "prompt")
            choices = await self._with_timeout(self._collect(prepared, trace))
            out = await self._completion_choices(request, prompts, prepared, choices)
        return CompletionResponse(
            id=new_id("cmpl"),
            created=now(),
            model=prepared.spec.id,
            choices=out,
            usage=self._usage(prepared, sum(c.completion_tokens for c in choices)),
        )

    async def _completion_choices(
        self, request: CompletionRequest, prompts: Prompts, prepared: Prepared, choices: list[Choice]
    ) -> list[CompletionChoice]:
        tokens: list[tuple[list[int], list[TokenLogprob | None]]] = []
        strings: Mapping[int, str] = {}
        if request.logprobs is not None:
            for index, choice in enumerate(choices):
                ids: list[int] = list(choice.token_ids)
                entries: list[TokenLogprob | None] = list(choice.logprobs)
                if request.echo:
                    ids = prepared.prompts[prepared.prompt_of(index)] + ids
                    entries = [*prompt_entries(prepared, index, choice.prompt_logprobs), *entries]
                tokens.append((ids, entries))
            wanted = {t for ids, entries in tokens for t in (*ids, *token_ids(entries))}
            strings = await self._strings(prepared.spec.id, wanted)
        out = []
        for index, choice in enumerate(choices):
            text = "".join(choice.text)
            if prompts.echo is not None:
                text = prompts.echo[prepared.prompt_of(index)] + text
            logprobs = None
            if request.logprobs is not None:
                ids, entries = tokens[index]
                logprobs, _ = completion_logprobs(ids, entries, strings, request.logprobs)
            out.append(
                CompletionChoice(
                    index=index, text=text, logprobs=logprobs, finish_reason=choice.finish_reason
                )
            )
        return out

    async def completion_stream(self, request: CompletionRequest) -> AsyncIterator[CompletionResponse]:
        """Validate first (errors raise before any byte is sent), then stream chunks."""
        prompts, prepared, trace, merged = await self._start_stream(
            request, ROUTE_COMPLETIONS, self._completion_prompts(request), "prompt"
        )
        return self._completion_chunks(request, prompts, prepared, trace, merged)

    async def _completion_chunks(
        self,
        request: CompletionRequest,
        prompts: Prompts,
        prepared: Prepared,
        trace: RequestTrace,
        merged: AsyncIterator[tuple[int, GenerationChunk]],
    ) -> AsyncIterator[CompletionResponse]:
        rid, created, total = new_id("cmpl"), now(), 0
        states = [StreamState() for _ in prepared.requests]
        with trace:
            async for index, chunk in merged:
                state = states[index]
                text, ids, entries = chunk_output(prepared, chunk)
                if not state.started:
                    # NOTE: a choice's first chunk carries the echoed prompt (and its logprobs)
                    state.started = True
                    if prompts.echo is not None:
                        text = prompts.echo[prepared.prompt_of(index)] + text
                        if request.logprobs is not None:
                            state.ids.extend(prepared.prompts[prepared.prompt_of(index)])
                            state.entries.extend(prompt_entries(prepared, index, chunk.prompt_logprobs))
                state.ids.extend(ids)
                state.entries.extend(entries)
                finish = chunk_finish(prepared, chunk)
                if chunk.finish_reason is not None and not prepared.drop_generated:
                    total += chunk.num_generated_tokens
                if not text and finish is None:
                    continue  # NOTE: logprobs of tokens without text yet go out with the next text
                logprobs: CompletionLogprobs | None = None
                if request.logprobs is not None:
                    wanted = {*state.ids, *token_ids(state.entries)}
                    strings = await self._strings(prepared.spec.id, wanted)
                    logprobs, state.offset = completion_logprobs(
                        state.ids, state.entries, strings, request.logprobs, state.offset
                    )
                    state.ids, state.entries = [], []
                yield CompletionResponse(
                    id=rid,
                    created=created,
                    model=prepared.spec.id,
                    choices=[
                        CompletionChoice(index=index, text=text, logprobs=logprobs, finish_reason=finish)
                    ],
                )
            if request.stream_options and request.stream_options.include_usage:
                yield CompletionResponse(
                    id=rid,
                    created=created,
                    model=prepared.spec.id,
                    choices=[],
                    usage=self._usage(prepared, total),
                )
