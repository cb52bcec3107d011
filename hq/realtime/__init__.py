"""Real-time: the events written once (realtime.py) over two transports, Socket.IO (Engine.IO and Socket.IO
servers, socketio_transport.py) and the plain WebSocket (plainws/), with one room table, fan-out and ordering."""
