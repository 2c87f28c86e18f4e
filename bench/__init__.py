"""Benchmarks: meshadapter.AsyncMeshManager vs socketio.AsyncRedisManager.

Run ``python -m bench`` from the repository root; see ``bench/README.md``.
"""
