"""Serving on Ray Serve: an OpenAI-style image endpoint with dynamic batching that never changes an image.

``schema``: the HTTP request and response (pure Python: parsed and checked before any model work);
``renderer``: one replica's model and its batched render calls (no Ray); ``app``: the Ray Serve
deployments (gateway + renderer replicas) and ``amo-engine serve``; ``loadtest``: concurrent
clients that check every response (a replica or a node killed mid-run); ``soak``: a steady rate for
minutes, replicas' memory and open files sampled; ``cluster``: a Ray cluster of nodes on this machine.
"""
