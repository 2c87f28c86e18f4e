"""meshadapter: several python-socketio servers behaving as one, with no broker.

Public API::

    AsyncMeshManager   client manager for socketio.AsyncServer
    MeshManager        client manager for socketio.Server (threading mode)
    MeshConfig         every option, with MESHADAPTER_* environment variables
    MeshTimeoutError   a cluster request timed out (has .missing / .responses)
"""

from __future__ import annotations

from .config import MeshConfig
from .manager import AsyncMeshManager
from .node import MeshTimeoutError
from .sync_manager import MeshManager

__version__ = "0.1.0"

__all__ = ["AsyncMeshManager", "MeshConfig", "MeshManager", "MeshTimeoutError", "__version__"]
