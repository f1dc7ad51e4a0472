"""OpenAI's Responses API (``POST /v1/responses``), served through the chat completions path.

A request is translated into a :class:`~gateway.api.openai.protocol.ChatCompletionRequest`
(``protocol.py``) and run by :class:`~gateway.api.openai.serving.OpenAIServing` under the
response's own id, so routing, rate limits, the completion log, feedback, cancellation and
errors are the chat path's; ``serving.py`` turns the chat answer (or its stream) into a
response object (or the Responses API's stream events).  Not ``responses.py`` next door, which
types the chat and text completion objects.
"""
