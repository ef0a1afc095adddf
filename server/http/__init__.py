"""HTTP endpoints beside the Socket.IO namespace."""
