"""Translation between the drop-in APIs (Anthropic Messages, OpenAI Responses, legacy completions) and chat
completions, the one API the pipeline (``gateway.api.pipeline``) routes and dispatches. Pure functions of JSON
values and event streams: no HTTP, no services."""
