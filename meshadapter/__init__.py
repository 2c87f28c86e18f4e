"""meshadapter: several python-socketio servers behaving as one, with no broker.

Public API::

    AsyncMeshManager   client manager for socketio.AsyncServer
    MeshManager        client manager for socketio.Server (threading mode)
    MeshConfig         every option, with MESHADAPTER_* environment variables
    MeshTimeoutError   a cluster request timed out (has .missing / .responses)
    AsyncRemoteSocket, RemoteSocket, NodeResponses, BroadcastAckTimeout
                       results of the cluster API (docs/cluster-api.md)
"""

from __future__ import annotations

from .cluster import AsyncRemoteSocket, BroadcastAckTimeout, NodeResponses, RemoteSocket
from .config import MeshConfig
from .manager import AsyncMeshManager
from .node import MeshTimeoutError
from .sync_manager import MeshManager

__version__ = "0.1.0"

__all__ = [
    "AsyncMeshManager",
    "AsyncRemoteSocket",
    "BroadcastAckTimeout",
    "MeshConfig",
    "MeshManager",
    "MeshTimeoutError",
    "NodeResponses",
    "RemoteSocket",
    "__version__",
]
