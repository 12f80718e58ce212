"""The HTTP service: ``seqformer serve`` (FastAPI + uvicorn, the optional ``seqformer[serve]`` extra).

Modules: ``settings`` (limits, no web imports), ``batcher`` (dynamic batching on one
model thread), ``schemas`` (request and response bodies), ``service`` (request to
model call and back), ``limits`` (body size and error bodies), ``app`` (routes) and
``server`` (uvicorn).
"""
