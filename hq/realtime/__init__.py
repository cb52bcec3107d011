"""Socket.IO: the Engine.IO and Socket.IO servers, the event handlers, fan-out and ordering."""
