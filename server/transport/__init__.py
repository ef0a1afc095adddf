"""Getting events to sockets: the Socket.IO emitter, and the quicker socket writer with the
guard that checks the library internals it relies on."""
