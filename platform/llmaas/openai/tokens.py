"""vLLM's ``POST /tokenize`` and ``/detokenize``."""

from __future__ import annotations

from llmaas.openai.core import ROUTE_DETOKENIZE, ROUTE_TOKENIZE, ServiceCore
from llmaas.openai.errors import bad_request
from llmaas.openai.protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeChatRequest,
    TokenizeRequest,
    TokenizeResponse,
)


class TokenRoutes(ServiceCore):
    """vLLM's ``POST /tokenize`` and ``/detokenize``."""

    async def tokenize(self, request: TokenizeRequest) -> TokenizeResponse:
        with self._trace(request.model, ROUTE_TOKENIZE):
            spec = self._any_spec(request.model)
            if isinstance(request, TokenizeChatRequest):
                ids = await self._call(
                    self.tokenizer.chat_template(
                        spec.id, request.template_messages(), request.add_generation_prompt
                    )
                )
            else:
                encoded = await self._call(
                    self.tokenizer.encode(spec.id, [request.prompt], request.add_special_tokens)
                )
                ids = encoded[0]
            strs = (
                await self._call(self.tokenizer.token_strings(spec.id, ids))
                if request.return_token_strs
                else None
            )
            info = await self._known_info(spec)
            limit = info.max_context_length if info is not None else spec.max_context_length
            if limit is None:
                limit = (await self.model_info(spec.id)).max_context_length
            return TokenizeResponse(count=len(ids), max_model_len=limit, tokens=ids, token_strs=strs)

    async def detokenize(self, request: DetokenizeRequest) -> DetokenizeResponse:
        with self._trace(request.model, ROUTE_DETOKENIZE):
            spec = self._any_spec(request.model)
            info = await self._known_info(spec)
            if info is not None:
                for i, token in enumerate(request.tokens):
                    if token >= info.vocab_size:
                        raise bad_request(
                            f"tokens[{i}] is {token}, outside model '{spec.id}''s vocabulary "
                            f"(0..{info.vocab_size - 1})",
                            param=f"tokens[{i}]",
                        )
            text = await self._call(self.tokenizer.decode(spec.id, list(request.tokens), False))
            return DetokenizeResponse(prompt=text)
